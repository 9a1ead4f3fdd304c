// Time-ordered random (version 7) UUIDs for event ids, and a validity check for ids given by callers.
#pragma once

#include <string>
#include <string_view>

namespace mire {

/// A fresh version 7 UUID (millisecond time + 74 random bits), canonical lower-case form.
std::string new_uuid();

/// True when `text` is a UUID in canonical 8-4-4-4-12 hexadecimal form.
bool is_uuid(std::string_view text);

} // namespace mire
