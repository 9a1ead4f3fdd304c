// caf::error <-> mire::error (see errors.hpp for why errors travel as caf::error).
#include "mire/actors/errors.hpp"

#include <string>

#include <caf/actor_system_config.hpp>
#include <caf/sec.hpp>

namespace mire::actors {

caf::error to_caf(const mire::error& e) {
  return caf::make_error(e.code, e.message, e.stream_id, e.expected, e.actual, e.sqlstate);
}

mire::error from_caf(const caf::error& e) {
  if (e.category() == caf::atom("mire")) {
    mire::error out{static_cast<errc>(e.code()), {}};
    const auto& ctx = e.context();
    if (ctx.match_elements<std::string, std::string, int64_t, int64_t, std::string>()) {
      out.message = ctx.get_as<std::string>(0);
      out.stream_id = ctx.get_as<std::string>(1);
      out.expected = ctx.get_as<int64_t>(2);
      out.actual = ctx.get_as<int64_t>(3);
      out.sqlstate = ctx.get_as<std::string>(4);
    }
    return out;
  }
  if (e == caf::sec::request_timeout)
    return {errc::timeout, "no answer in time"};
  if (e == caf::sec::request_receiver_down)
    return {errc::unavailable, "the actor asked has stopped"};
  return {errc::internal, caf::to_string(e)};
}

void add_mire_types(caf::actor_system_config& cfg) {
  // The templated add_error_category<T> of CAF 0.17.6 does not compile (it passes a renderer of
  // the wrong signature); this renders the restored mire::error, context included.
  cfg.add_error_category(caf::atom("mire"),
                         [](uint8_t code, caf::atom_value category, const caf::message& ctx) {
                           return "mire: " + from_caf(caf::error{code, category, ctx}).what();
                         });
}

} // namespace mire::actors
