// A bank account aggregate for the actor tests: refusable commands, a command that records two
// events (a withdrawal with its fee), snapshots, and a ref on every event naming the command
// that recorded it, so a test can find each accepted command's events in the log.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "mire/actors/decision.hpp"

namespace bank {

using nlohmann::json;

struct opened {
  static constexpr std::string_view type_name = "account.opened";
  std::string owner;
  bool operator==(const opened&) const = default;
};
struct deposited {
  static constexpr std::string_view type_name = "account.deposited";
  int64_t amount = 0;
  std::string ref;
  bool operator==(const deposited&) const = default;
};
struct withdrawn {
  static constexpr std::string_view type_name = "account.withdrawn";
  int64_t amount = 0;
  std::string ref;
  bool operator==(const withdrawn&) const = default;
};
struct fee_charged {
  static constexpr std::string_view type_name = "account.fee_charged";
  int64_t amount = 0;
  std::string ref;
  bool operator==(const fee_charged&) const = default;
};
struct closed {
  static constexpr std::string_view type_name = "account.closed";
  std::string reason;
  bool operator==(const closed&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(opened, owner)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(deposited, amount, ref)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(withdrawn, amount, ref)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(fee_charged, amount, ref)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(closed, reason)

struct open {
  std::string owner;
};
struct deposit {
  int64_t amount = 0;
  std::string ref;
};
/// Records withdrawn and, when fee > 0, fee_charged: two events, one command.
struct withdraw {
  int64_t amount = 0;
  int64_t fee = 0;
  std::string ref;
};
struct close {
  std::string reason;
};

enum class account_error { not_open, already_open, closed, invalid_amount, insufficient_funds };

inline std::string_view to_string(account_error e) {
  switch (e) {
  case account_error::not_open:
    return "not_open";
  case account_error::already_open:
    return "already_open";
  case account_error::closed:
    return "closed";
  case account_error::invalid_amount:
    return "invalid_amount";
  case account_error::insufficient_funds:
    return "insufficient_funds";
  }
  return "unknown";
}

struct account {
  using event = std::variant<opened, deposited, withdrawn, fee_charged, closed>;
  using command = std::variant<open, deposit, withdraw, close>;
  static constexpr int snapshot_schema = 1;

  bool is_open = false;
  bool is_closed = false;
  std::string owner;
  int64_t balance = 0;
  int64_t events = 0;  ///< events folded in, also those covered by a snapshot
  int64_t applied = 0; ///< events applied in this process: not snapshotted, shows replay work

  void apply(const event& e) {
    ++events;
    ++applied;
    if (auto* o = std::get_if<opened>(&e)) {
      is_open = true;
      owner = o->owner;
    } else if (auto* d = std::get_if<deposited>(&e)) {
      balance += d->amount;
    } else if (auto* w = std::get_if<withdrawn>(&e)) {
      balance -= w->amount;
    } else if (auto* f = std::get_if<fee_charged>(&e)) {
      balance -= f->amount;
    } else if (std::holds_alternative<closed>(e)) {
      is_closed = true;
    }
  }

  mire::decision<event> decide(const command& c) const {
    using mire::reject;
    if (auto* o = std::get_if<open>(&c)) {
      if (is_open)
        return reject(account_error::already_open, "account is already open");
      return opened{o->owner};
    }
    if (!is_open)
      return reject(account_error::not_open, "account is not open");
    if (is_closed)
      return reject(account_error::closed, "account is closed");
    if (auto* d = std::get_if<deposit>(&c)) {
      if (d->amount <= 0)
        return reject(account_error::invalid_amount, "deposit must be positive");
      return deposited{d->amount, d->ref};
    }
    if (auto* w = std::get_if<withdraw>(&c)) {
      if (w->amount <= 0 || w->fee < 0)
        return reject(account_error::invalid_amount, "withdrawal must be positive");
      if (balance < w->amount + w->fee)
        return reject(account_error::insufficient_funds, "balance too low");
      std::vector<event> out{withdrawn{w->amount, w->ref}};
      if (w->fee > 0)
        out.emplace_back(fee_charged{w->fee, w->ref});
      return out;
    }
    if (balance != 0)
      return reject("not_empty", "only an empty account can be closed");
    return closed{std::get<close>(c).reason};
  }
};

inline void to_json(json& j, const account& a) {
  j = json{{"is_open", a.is_open},
           {"is_closed", a.is_closed},
           {"owner", a.owner},
           {"balance", a.balance},
           {"events", a.events}};
}
inline void from_json(const json& j, account& a) {
  j.at("is_open").get_to(a.is_open);
  j.at("is_closed").get_to(a.is_closed);
  j.at("owner").get_to(a.owner);
  j.at("balance").get_to(a.balance);
  j.at("events").get_to(a.events);
}

} // namespace bank
