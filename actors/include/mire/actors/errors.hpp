// mire errors inside CAF. Errors cross actor boundaries as caf::error of category "mire": they then
// flow through CAF's own paths (a request's error handler, response promises, delegation) with no
// result wrapper per message, and CAF's own failures (request timeout, receiver down) arrive on
// the same path. The context of a mire::error (message, stream, expected, actual, SQLSTATE) rides
// in the caf::error's context and from_caf restores it, so nothing is lost on the way.
#pragma once

#include <caf/error.hpp>
#include <caf/fwd.hpp>
#include <caf/make_message.hpp>

#include "mire/store/error.hpp"

CAF_ERROR_CODE_ENUM(mire::errc, "mire")

namespace mire::actors {

/// The caf::error carrying `e` (category "mire", code = e.code, context = its fields).
caf::error to_caf(const mire::error& e);

/// The mire::error inside `e`. CAF's own errors map to what a caller can act on: a request
/// timeout to errc::timeout, a receiver that is gone to errc::unavailable, anything else to
/// errc::internal with CAF's description.
mire::error from_caf(const caf::error& e);

/// Registers mire's error category (for readable errors in CAF's logs and to_string) with a
/// configuration, before its actor_system is constructed.
void add_mire_types(caf::actor_system_config& cfg);

} // namespace mire::actors
