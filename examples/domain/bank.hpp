// The bank account every example (and `mire demo`) uses: events, commands, the rules that decide
// them, and the state they fold into. Pure domain code: no database, no actors.
//
//   bank::account a;                          // never opened
//   auto d = a.decide(bank::deposit{10});     // rejected: not_opened
//   a.apply(bank::opened{"Ada"});
//   d = a.decide(bank::withdraw{10});         // rejected: insufficient_funds
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include <nlohmann/json.hpp>

#include "mire/actors/decision.hpp"

namespace bank {

// --- events: what happened, in past tense, with stable type names --------------------------

/// The account was opened for `owner`.
struct opened {
  static constexpr std::string_view type_name = "account.opened";
  std::string owner;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(opened, owner)

/// Money came in.
struct deposited {
  static constexpr std::string_view type_name = "account.deposited";
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(deposited, amount)

/// Money went out.
struct withdrawn {
  static constexpr std::string_view type_name = "account.withdrawn";
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(withdrawn, amount)

/// The account was closed; no money moves through it any more.
struct closed {
  static constexpr std::string_view type_name = "account.closed";
  std::string reason;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(closed, reason)

// --- commands: what someone asks for; the account may refuse --------------------------------

/// Open the account for `owner`.
struct open {
  std::string owner;
};

/// Put `amount` (> 0) in.
struct deposit {
  int64_t amount = 0;
};

/// Take `amount` (> 0) out; never more than the balance.
struct withdraw {
  int64_t amount = 0;
};

/// Close the account; only an empty one can be closed, so no money disappears with it.
struct close {
  std::string reason;
};

// --- the rules --------------------------------------------------------------------------------

/// Why the account refused a command.
enum class error_code : uint8_t {
  not_opened = 1,     ///< the account was never opened
  already_opened,     ///< open on an account that exists
  account_closed,     ///< any command on a closed account
  invalid_amount,     ///< an amount of zero or less, or one the balance cannot hold
  insufficient_funds, ///< a withdrawal larger than the balance
  balance_not_zero,   ///< close while money is still in the account
};

/// Stable name of a code (what callers branch on), e.g. "insufficient_funds".
constexpr std::string_view to_string(error_code code) {
  switch (code) {
  case error_code::not_opened:
    return "not_opened";
  case error_code::already_opened:
    return "already_opened";
  case error_code::account_closed:
    return "account_closed";
  case error_code::invalid_amount:
    return "invalid_amount";
  case error_code::insufficient_funds:
    return "insufficient_funds";
  case error_code::balance_not_zero:
    return "balance_not_zero";
  }
  return "unknown";
}

/// Where an account stands in its life.
enum class account_status : uint8_t { unopened, open, closed };
NLOHMANN_JSON_SERIALIZE_ENUM(account_status, {{account_status::unopened, "unopened"},
                                              {account_status::open, "open"},
                                              {account_status::closed, "closed"}})

/// The account: nothing but the fold of its events (apply), and the rules that turn a command
/// into new events or a refusal (decide). The balance never goes below zero.
struct account {
  using event = std::variant<opened, deposited, withdrawn, closed>;
  using command = std::variant<open, deposit, withdraw, close>;
  /// Bump when the fields below change shape: older snapshots are then ignored and replayed.
  static constexpr int snapshot_schema = 1;

  account_status status = account_status::unopened;
  std::string owner;
  int64_t balance = 0;

  /// Folds one event. Cannot fail: the event has already happened.
  void apply(const event& e) {
    std::visit(
        [this](const auto& x) {
          using E = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<E, opened>) {
            status = account_status::open;
            owner = x.owner;
          } else if constexpr (std::is_same_v<E, deposited>) {
            balance += x.amount;
          } else if constexpr (std::is_same_v<E, withdrawn>) {
            balance -= x.amount;
          } else {
            status = account_status::closed;
          }
        },
        e);
  }

  /// Decides a command on the current state. Pure: the runtime calls it again after a conflict.
  mire::decision<event> decide(const command& c) const {
    return std::visit([this](const auto& x) { return decide_one(x); }, c);
  }

  bool operator==(const account&) const = default;

private:
  mire::decision<event> decide_one(const open& c) const {
    if (status != account_status::unopened)
      return mire::reject(error_code::already_opened, "account already opened by " + owner);
    return opened{c.owner};
  }
  mire::decision<event> decide_one(const deposit& c) const {
    if (auto refused = refuse_money(c.amount))
      return std::move(*refused);
    if (c.amount > std::numeric_limits<int64_t>::max() - balance)
      return mire::reject(error_code::invalid_amount,
                          "a deposit of " + std::to_string(c.amount) + " overflows the balance");
    return deposited{c.amount};
  }
  mire::decision<event> decide_one(const withdraw& c) const {
    if (auto refused = refuse_money(c.amount))
      return std::move(*refused);
    if (c.amount > balance)
      return mire::reject(error_code::insufficient_funds,
                          "cannot withdraw " + std::to_string(c.amount) + " from a balance of " +
                              std::to_string(balance));
    return withdrawn{c.amount};
  }
  mire::decision<event> decide_one(const close& c) const {
    if (auto refused = refuse_unless_open())
      return std::move(*refused);
    if (balance != 0)
      return mire::reject(error_code::balance_not_zero,
                          "cannot close with a balance of " + std::to_string(balance));
    return closed{c.reason};
  }

  /// Refuses any command but open on an account that is not open.
  std::optional<mire::rejected> refuse_unless_open() const {
    if (status == account_status::unopened)
      return mire::reject(error_code::not_opened, "account was never opened");
    if (status == account_status::closed)
      return mire::reject(error_code::account_closed, "account is closed");
    return std::nullopt;
  }

  /// Refuses moving `amount` through this account, before looking at the balance.
  std::optional<mire::rejected> refuse_money(int64_t amount) const {
    if (auto refused = refuse_unless_open())
      return refused;
    if (amount <= 0)
      return mire::reject(error_code::invalid_amount,
                          "amount must be positive, got " + std::to_string(amount));
    return std::nullopt;
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(account, status, owner, balance)

static_assert(mire::aggregate_root<account>);
static_assert(mire::snapshottable<account>);

} // namespace bank
