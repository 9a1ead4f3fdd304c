#include "mire/store/uuid.hpp"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>

namespace mire {

namespace {

// A child of fork() starts with a copy of its parent's generators: counted here, so that each
// thread seeds its generator again once it sees a fork it has not seeded after (else parent and
// child would make the same ids).
std::atomic<uint64_t> forks{0};
const int fork_watch = pthread_atfork(nullptr, nullptr, [] { forks.fetch_add(1); });

std::mt19937_64 seeded() {
  std::random_device rd;
  std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
  return std::mt19937_64{seq};
}

} // namespace

std::string new_uuid() {
  // One generator per thread, seeded from the OS: no lock on the append path.
  thread_local uint64_t seeded_at = forks.load();
  thread_local std::mt19937_64 gen = seeded();
  if (const auto now = forks.load(std::memory_order_relaxed); now != seeded_at) {
    gen = seeded();
    seeded_at = now;
  }
  // Version 7: the millisecond clock first, so ids of events written together sit together in
  // the unique index instead of landing on random pages (measurably cheaper bulk inserts).
  const auto ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count());
  uint64_t hi = (ms << 16) | (gen() & 0x0FFFull) | 0x7000ull;
  uint64_t lo = (gen() & ~(0xC000ull << 48)) | (0x8000ull << 48);  // RFC 9562 variant
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(36, '-');
  int pos = 0;
  auto put = [&](uint64_t v, int nibbles) {
    for (int i = nibbles - 1; i >= 0; --i) {
      if (pos == 8 || pos == 13 || pos == 18 || pos == 23)
        ++pos;
      out[pos++] = hex[(v >> (i * 4)) & 0xF];
    }
  };
  put(hi, 16);
  put(lo, 16);
  return out;
}

bool is_uuid(std::string_view t) {
  if (t.size() != 36)
    return false;
  for (size_t i = 0; i < t.size(); ++i) {
    const char c = t[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-')
        return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

} // namespace mire
