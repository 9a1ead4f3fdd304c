#include "common.hpp"

#include <algorithm>
#include <cstdio>
#include <latch>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

namespace mire::bench::detail {

namespace {

std::string trimmed(std::string msg) {
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' '))
    msg.pop_back();
  return msg;
}

std::string number(double v) {
  if (v >= 1000)
    return fmt::format("{:.0f}", v);
  if (v >= 10)
    return fmt::format("{:.1f}", v);
  return fmt::format("{:.2f}", v);
}

} // namespace

// --- raw_conn -------------------------------------------------------------------------------------

raw_conn::raw_conn(const std::string& url) {
  const char* keys[] = {"dbname", "application_name", nullptr};
  const char* values[] = {url.c_str(), "mire-bench-baseline", nullptr};
  c_ = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (c_ == nullptr || PQstatus(c_) != CONNECTION_OK) {
    std::string msg = trimmed(c_ ? PQerrorMessage(c_) : "out of memory");
    if (c_)
      PQfinish(c_);
    c_ = nullptr;
    throw failure(4, "database unavailable: " + msg);
  }
  // The same session settings as the store's connections.
  exec("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET client_min_messages = 'warning'");
}

raw_conn::~raw_conn() {
  if (c_)
    PQfinish(c_);
}

pg_result raw_conn::check(PGresult* r, std::string_view doing) const {
  pg_result owned{r, &PQclear};
  const auto st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_COPY_IN)
    throw failure(PQstatus(c_) == CONNECTION_OK ? 1 : 4,
                  fmt::format("baseline: {}: {}", doing, trimmed(PQerrorMessage(c_))));
  return owned;
}

pg_result raw_conn::exec(const std::string& sql) { return check(PQexec(c_, sql.c_str()), sql); }

void raw_conn::prepare(const std::string& name, const std::string& sql, int nparams) {
  check(PQprepare(c_, name.c_str(), sql.c_str(), nparams, nullptr), "prepare " + name);
}

pg_result raw_conn::run(const std::string& name, const std::vector<const char*>& values) {
  return check(PQexecPrepared(c_, name.c_str(), static_cast<int>(values.size()), values.data(),
                              nullptr, nullptr, 0),
               name);
}

void raw_conn::copy_in(const std::string& sql, std::string_view data) {
  check(PQexec(c_, sql.c_str()), sql);
  constexpr std::size_t chunk = 64 * 1024;
  for (std::size_t off = 0; off < data.size(); off += chunk) {
    const auto n = std::min(chunk, data.size() - off);
    if (PQputCopyData(c_, data.data() + off, static_cast<int>(n)) != 1)
      break;
  }
  PQputCopyEnd(c_, nullptr);
  PGresult* last = nullptr;
  while (PGresult* r = PQgetResult(c_)) {
    if (last)
      PQclear(last);
    last = r;
  }
  check(last, "COPY");
}

std::string quote_ident(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"')
      out += '"';
    out += c;
  }
  return out + '"';
}

std::string server_text(raw_conn& c, double scale) {
  auto r = c.exec("SELECT current_setting('server_version'), current_setting('fsync'), "
                  "current_setting('synchronous_commit')");
  return fmt::format("PostgreSQL {}, fsync={}, synchronous_commit={}, scale {:g}",
                     PQgetvalue(r.get(), 0, 0), PQgetvalue(r.get(), 0, 1),
                     PQgetvalue(r.get(), 0, 2), scale);
}

schema_guard::~schema_guard() {
  try {
    raw_conn c{url};
    c.exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)));
  } catch (const std::exception& e) {
    fmt::print(stderr, "mire bench: could not drop schema {}: {}\n", schema, e.what());
  }
}

// --- figures ------------------------------------------------------------------------------------

figure make_figure(std::string name, double mire, double baseline, std::string unit, bool at_most,
                   std::optional<double> target, std::string about) {
  return figure{std::move(name), mire,    baseline,        std::move(unit),
                baseline > 0 ? mire / baseline : 0,
                target,          at_most, std::move(about)};
}

double median(std::vector<double> v) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty())
    return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

double run_threads(int n, const std::function<void(int)>& setup,
                   const std::function<void(int)>& body) {
  std::latch ready{n};
  std::latch go{1};
  std::mutex m;
  std::optional<failure> first;
  auto keep = [&](const failure& f) {
    std::lock_guard lock{m};
    if (!first)
      first = f;
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      bool ok = true;
      try {
        setup(i);
      } catch (const failure& f) {
        keep(f);
        ok = false;
      } catch (const std::exception& e) {
        keep(failure(1, e.what()));
        ok = false;
      }
      ready.count_down();
      go.wait();
      if (!ok)
        return;
      try {
        body(i);
      } catch (const failure& f) {
        keep(f);
      } catch (const std::exception& e) {
        keep(failure(1, e.what()));
      }
    });
  }
  ready.wait();
  const auto t0 = steady::now();
  go.count_down();
  for (auto& t : threads)
    t.join();
  const double secs = seconds_since(t0);
  if (first)
    throw *first;
  return secs;
}

void print_table(std::string_view bench, const std::vector<figure>& figures,
                 const std::string& server) {
  fmt::print("\nmire bench {}  ({})\n\n", bench, server);
  fmt::print("{:<24} {:>12} {:>12} {:<9} {:>7}  {:<8} {}\n", "figure", "mire", "baseline", "unit",
             "ratio", "target", "");
  fmt::print("{}\n", std::string(84, '-'));
  for (const auto& f : figures)
    fmt::print("{:<24} {:>12} {:>12} {:<9} {:>6.2f}x  {:<8} {}\n", f.name, number(f.mire),
               number(f.baseline), f.unit, f.ratio, f.target_text(),
               !f.target  ? ""
               : f.pass() ? "ok"
                          : "MISSED");
  fmt::print("\n");
  for (const auto& f : figures)
    fmt::print("  {}: {}\n", f.name, f.about);
  std::fflush(stdout);
}

void print_json(const std::vector<figure>& figures) {
  for (const auto& f : figures) {
    nlohmann::ordered_json j{{"name", f.name},
                             {"mire", f.mire},
                             {"baseline", f.baseline},
                             {"unit", f.unit},
                             {"ratio", f.ratio}};
    if (f.target) {
      j["target"] = f.target_text();
      j["pass"] = f.pass();
    } else {
      j["target"] = nullptr;
      j["pass"] = nullptr;
    }
    fmt::print("{}\n", j.dump());
  }
  std::fflush(stdout);
}

int measure(std::string_view bench, const options& o, std::vector<figure>& figures,
            const std::string& server, const std::function<void()>& body) {
  int code = 0;
  try {
    body();
  } catch (const failure& f) {
    fmt::print(stderr, "mire bench {}: {}\n", bench, f.what());
    code = f.code;
  } catch (const std::exception& e) {
    fmt::print(stderr, "mire bench {}: {}\n", bench, e.what());
    code = 1;
  }
  // What was measured is shown even when a later part failed.
  if (!figures.empty()) {
    if (o.json)
      print_json(figures);
    else
      print_table(bench, figures, server);
  }
  return code;
}

} // namespace mire::bench::detail
