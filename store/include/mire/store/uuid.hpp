// Random (version 4) UUIDs for event ids, and a validity check for ids given by callers.
#pragma once

#include <string>
#include <string_view>

namespace mire {

/// A fresh random UUID in canonical lower-case form, e.g. "1b4e28ba-2fa1-41d2-883f-0016d3cca427".
std::string new_uuid();

/// True when `text` is a UUID in canonical 8-4-4-4-12 hexadecimal form.
bool is_uuid(std::string_view text);

} // namespace mire
