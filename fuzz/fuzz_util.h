// Shared by the libFuzzer targets: every msae reader takes a path, so each input is written to a private
// scratch file (in /dev/shm when it exists, so no disk I/O) and the reader opens that.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace msae::fuzz {

// A per-process scratch directory, created once and removed at a normal exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string templ = std::string(base) + "/msae-fuzz-XXXXXX";
    if (mkdtemp(templ.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    // Removed on a normal exit (time limit reached); a crash leaves it for inspection. The path is copied
    // to a plain array: the handler runs after this std::string has been destroyed.
    static char path_at_exit[4096];
    std::snprintf(path_at_exit, sizeof path_at_exit, "%s", templ.c_str());
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(path_at_exit, ec);
    });
    return templ;
  }();
  return dir;
}

// Writes exactly `size` bytes to `path` (truncating); aborts on I/O failure (a harness bug, not a finding).
inline void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::perror(path.c_str());
    std::abort();
  }
  size_t done = 0;
  while (done < size) {
    const ssize_t put = ::write(fd, data + done, size - done);
    if (put <= 0) {
      std::perror(path.c_str());
      std::abort();
    }
    done += static_cast<size_t>(put);
  }
  ::close(fd);
}

inline void write_text(const std::string& path, const std::string& s) {
  write_bytes(path, reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// The next chunk of [p, end) in the targets' input formats: a u16 little-endian length, then that many
// bytes (clipped to what is left). Advances p.
inline std::string take_chunk(const uint8_t*& p, const uint8_t* end) {
  size_t n = 0;
  if (end - p >= 2) {
    n = static_cast<size_t>(p[0]) | (static_cast<size_t>(p[1]) << 8);
    p += 2;
  } else {
    p = end;
  }
  n = std::min(n, static_cast<size_t>(end - p));
  std::string out(reinterpret_cast<const char*>(p), n);
  p += n;
  return out;
}

}  // namespace msae::fuzz
