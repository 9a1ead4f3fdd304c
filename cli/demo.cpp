// `mire demo`: the first thing a new user runs. A bank account kept as events: load -> record ->
// save, load again from the log, and a stale writer refused by optimistic concurrency.
#include <cstdint>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "commands.hpp"
#include "domain/bank.hpp" // the account of the examples: events, commands, rules (examples/)
#include "mire/store/repository.hpp"
#include "mire/store/uuid.hpp"

namespace mire::cli {

namespace {

// Left column of the text output, so that the steps line up.
constexpr int step_width = 36;

void step(std::string_view left, std::string_view right) {
  fmt::print("{:<{}}{}\n", left, step_width, right);
}

} // namespace

int run_demo(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {}); !ok)
    return ctx.fail(ok.error());
  if (auto ok = check_demo_actors_options(cl); !ok)  // the actor part's options (demo_actors.cpp)
    return ctx.fail(ok.error());
  auto url = ctx.database_url();
  if (!url)
    return ctx.fail(url.error());
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  const bool text = !ctx.json_output();
  repository<bank::account> accounts{*store};
  // A fresh stream per run, so the demo can be run again and again on the same database.
  const std::string id = "account-" + new_uuid().substr(24);

  if (text) {
    fmt::print("mire demo: a bank account kept as a stream of events\n");
    // An external URL may carry a password: show only the embedded one.
    fmt::print("database: {}\n\n",
               ctx.external_database()
                   ? "the one named by mire.database.url (from " + ctx.database_origin() + ")"
                   : "embedded, " + *url);
  }

  auto acc = accounts.load(id);
  if (!acc)
    return ctx.fail(acc.error());
  // A second copy, loaded at the same version, plays a concurrent writer that arrives late.
  auto stale = accounts.load(id);
  if (!stale)
    return ctx.fail(stale.error());
  if (text)
    step(fmt::format("1. load {}", id), fmt::format("new stream, version {}", acc->version()));

  const int64_t loaded_at = acc->version();
  const bank::account::event history[] = {bank::opened{"Ada"}, bank::deposited{100},
                                          bank::withdrawn{30}};
  for (std::size_t i = 0; i < std::size(history); ++i) {
    acc->record(history[i]);
    if (text) {
      const auto& e = acc->pending().back();
      step(i == 0 ? "2. record" : "", fmt::format("{:<18} {}", e.type, e.data));
    }
  }

  auto saved = accounts.save(*acc);
  if (!saved)
    return ctx.fail(saved.error());
  if (text)
    step(fmt::format("3. save, expecting version {}", loaded_at),
         fmt::format("stored, stream at version {}", saved->version));

  auto replayed = accounts.load(id);
  if (!replayed)
    return ctx.fail(replayed.error());
  const auto& state = replayed->state();
  if (text)
    step(fmt::format("4. load again: replay {} events", replayed->version()),
         fmt::format("owner {}, balance {}, version {}", state.owner, state.balance,
                     replayed->version()));

  stale->record(bank::deposited{1000});
  auto refused = accounts.save(*stale);
  if (refused)
    return ctx.fail(error{errc::internal, "a save expecting a stale version was accepted"});
  if (refused.error().code != errc::version_conflict)
    return ctx.fail(refused.error());
  if (text) {
    step(fmt::format("5. a stale copy (version {}) saves", loaded_at), "refused, nothing stored:");
    step("", refused.error().what());
  }

  // The demo doubles as a smoke test: the log must give back exactly what was recorded.
  if (state.owner != "Ada" || state.balance != 70 || replayed->version() != 3)
    return ctx.fail(error{errc::internal,
                          fmt::format("replayed state differs from what was recorded: owner {}, "
                                      "balance {}, version {}",
                                      state.owner, state.balance, replayed->version())});

  if (!text) {
    ctx.print({{"stream_id", id},
               {"events", std::size(history)},
               {"version", saved->version},
               {"global_position", saved->last_position},
               {"state", {{"owner", state.owner}, {"balance", state.balance}}},
               {"stale_save_refused", true}});
    return run_demo_actors(ctx, cl, std::move(*store));  // the actor runtime (demo_actors.cpp)
  }
  fmt::print("\nsummary: {} events stored in {}, stream version {}, global position {}\n",
             std::size(history), id, saved->version, saved->last_position);
  fmt::print("next:    mire read {}\n", id);
  fmt::print("         mire read-all --category account --json\n");
  return run_demo_actors(ctx, cl, std::move(*store));  // the actor runtime (demo_actors.cpp)
}

} // namespace mire::cli
