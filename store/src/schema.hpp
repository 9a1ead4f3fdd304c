// Schema names and the numbered migrations that create and evolve mire's tables.
#pragma once

#include <string>
#include <string_view>

#include "mire/store/error.hpp"
#include "pg.hpp"

namespace mire::detail {

/// bad_input unless `schema` is a plain lower-case SQL identifier (so it can be quoted safely
/// into statement text; user values never are).
result<void> check_schema_name(std::string_view schema);

/// Replaces every "{s}" in `sql` with the quoted schema name.
std::string in_schema(std::string_view sql, std::string_view schema);

/// Applies pending migrations under an advisory lock; returns how many were applied.
result<int> migrate(pg::connection& conn, std::string_view schema);

} // namespace mire::detail
