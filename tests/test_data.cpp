// Activation sources (include/msae/data.h, docs/data.md): every file format and dtype, directories and
// globs of shards, the three read orders (file order, permutation, shuffle buffer), the reader thread,
// exact resume from state() in every mode, non-finite rows (error / skip), bad shards, and the
// expected-norm scale. Comparisons of read values are exact: the stored values are chosen to be exactly
// representable in every dtype they are written in (multiples of 1/8 below 64), so f16/bf16 conversion
// is lossless and any difference is a bug.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "msae/data.h"
#include "msae/io.h"

namespace fs = std::filesystem;
using msae::data::DataOptions;
using msae::data::open_data;

namespace {

// Value of global row r, column j: exactly representable in f32, f16 and bf16 (k/8, |k/8| < 64 needs
// 9 significant bits: bf16 has 8, so keep |k| < 256, i.e. 5 integer bits + 3 fraction bits).
float value(int64_t r, int64_t j) { return static_cast<float>(((r * 7 + j * 3) % 255) - 127) / 8.0f; }

std::vector<uint16_t> to16(const std::vector<float>& x, bool bf16) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = bf16 ? msae::io::float_to_bf16(x[i]) : msae::io::float_to_half(x[i]);
  return out;
}

std::vector<float> rows_block(int64_t first, int64_t n, int64_t d) {
  std::vector<float> x(n * d);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d; ++j) x[r * d + j] = value(first + r, j);
  return x;
}

// A .npy with an arbitrary descr (numpy format 1.0), written by hand for f16/u2 payloads.
void write_npy_raw(const std::string& path, const std::string& descr, int64_t rows, int64_t cols, const void* data,
                   size_t bytes) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const auto len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out << header;
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

// A .safetensors with 16-bit tensors (the project's writer writes F32 only).
void write_st16(const std::string& path, const std::string& dtype, const std::map<std::string, std::pair<std::vector<int64_t>, std::vector<uint16_t>>>& t) {
  nlohmann::ordered_json h;
  int64_t off = 0;
  for (const auto& [name, v] : t) {
    const auto bytes = static_cast<int64_t>(v.second.size() * 2);
    h[name] = {{"dtype", dtype}, {"shape", v.first}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string text = h.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = text.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << text;
  for (const auto& [name, v] : t) out.write(reinterpret_cast<const char*>(v.second.data()), static_cast<std::streamsize>(v.second.size() * 2));
}

std::vector<float> read_all(msae::data::ActivationSource& s, int64_t n) {
  std::vector<float> x(n * s.d());
  s.next_batch(n, x.data());
  return x;
}

// Row ids of a batch, recovered from the values (value() is injective on the first 255 rows per column 0
// modulo 255, so the tests that need ids use column 0 and 1 together with rows < 255 * k... simpler: a
// dedicated id column). The id tests write column 0 = row id exactly (f32 data).
std::vector<int64_t> ids_of(const std::vector<float>& x, int64_t d) {
  std::vector<int64_t> ids(x.size() / d);
  for (size_t r = 0; r < ids.size(); ++r) ids[r] = static_cast<int64_t>(x[r * d]);
  return ids;
}

class Data : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("msae_data_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return (dir_ / name).string(); }

  // f32 shards whose column 0 is the global row id (exact up to 2^24), the rest value().
  std::string id_shards(const std::string& sub, const std::vector<int64_t>& sizes, int64_t d) {
    fs::create_directories(dir_ / sub);
    int64_t first = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::vector<float> x = rows_block(first, sizes[i], d);
      for (int64_t r = 0; r < sizes[i]; ++r) x[r * d] = static_cast<float>(first + r);
      msae::io::write_npy((dir_ / sub / ("shard" + std::to_string(i) + ".npy")).string(), x.data(), {sizes[i], d});
      first += sizes[i];
    }
    return (dir_ / sub).string();
  }

  template <class F>
  void expect_error(F&& f, const std::vector<std::string>& parts) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning " << parts[0];
    } catch (const msae::Error& e) {
      for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  }

  fs::path dir_;
};

TEST_F(Data, EveryFormatAndDtypeReadsExactly) {
  const int64_t n = 37, d = 13;  // 13: the 8-wide float16 path and a 5-value tail
  const std::vector<float> x = rows_block(0, n, d);
  msae::io::write_npy(p("f32.npy"), x.data(), {n, d});
  const auto h = to16(x, false), b = to16(x, true);
  write_npy_raw(p("f16.npy"), "<f2", n, d, h.data(), h.size() * 2);
  write_npy_raw(p("bf16.npy"), "<u2", n, d, b.data(), b.size() * 2);
  msae::io::write_safetensors(p("f32.safetensors"), {{"acts", {n, d}, x.data()}});
  write_st16(p("f16.safetensors"), "F16", {{"acts", {{n, d}, h}}});
  write_st16(p("bf16.safetensors"), "BF16", {{"acts", {{n, d}, b}}, {"other", {{2, 2}, {1, 2, 3, 4}}}});
  std::ofstream(p("f32.bin"), std::ios::binary).write(reinterpret_cast<const char*>(x.data()), static_cast<std::streamsize>(x.size() * 4));
  std::ofstream(p("f16.raw"), std::ios::binary).write(reinterpret_cast<const char*>(h.data()), static_cast<std::streamsize>(h.size() * 2));

  struct Case {
    std::string file, dtype, tensor;
    int64_t d_in;
  };
  const std::vector<Case> cases = {{"f32.npy", "", "", 0},         {"f16.npy", "", "", 0},
                                   {"bf16.npy", "bf16", "", 0},    {"f32.safetensors", "", "", 0},
                                   {"f16.safetensors", "", "", 0}, {"bf16.safetensors", "", "acts", 0},
                                   {"f32.bin", "", "", d},         {"f16.raw", "f16", "", d}};
  for (const Case& c : cases) {
    DataOptions o;
    o.shuffle = false;
    o.dtype = c.dtype;
    o.tensor = c.tensor;
    o.d_in = c.d_in;
    auto s = open_data(p(c.file), o);
    ASSERT_EQ(s->rows(), n) << c.file;
    ASSERT_EQ(s->d(), d) << c.file;
    EXPECT_EQ(read_all(*s, n), x) << c.file;
  }
  // '<u2' without --dtype bf16 is refused; --dtype contradicting a header is refused.
  DataOptions o;
  expect_error([&] { open_data(p("bf16.npy"), o); }, {"bf16.npy", "uint16"});
  o.dtype = "f32";
  expect_error([&] { open_data(p("f16.npy"), o); }, {"f16.npy", "float16", "--dtype"});
  // Two 2-D tensors and no --tensor: a usage error listing them.
  o.dtype = "";
  expect_error([&] { open_data(p("bf16.safetensors"), o); }, {"bf16.safetensors", "--tensor"});
  o.tensor = "nope";
  expect_error([&] { open_data(p("bf16.safetensors"), o); }, {"no tensor named 'nope'", "acts"});
}

TEST_F(Data, DirectoriesAndGlobsConcatenateShardsInNameOrder) {
  const int64_t d = 4;
  const std::string dir = id_shards("shards", {10, 3, 7}, d);
  std::ofstream(dir + "/README.txt") << "not data";  // ignored in a directory
  DataOptions o;
  o.shuffle = false;
  for (const std::string& spec : {dir, dir + "/shard*.npy"}) {
    auto s = open_data(spec, o);
    ASSERT_EQ(s->rows(), 20);
    const auto ids = ids_of(read_all(*s, 25), d);  // wraps after 20
    for (int64_t i = 0; i < 25; ++i) EXPECT_EQ(ids[i], i % 20) << spec;
  }
  expect_error([&] { open_data(dir + "/none*.npy", o); }, {"no file matches"});
  fs::create_directories(dir_ / "empty");
  expect_error([&] { open_data(p("empty"), o); }, {"no data files"});
}

TEST_F(Data, PermutationVisitsEveryRowOncePerEpoch) {
  const int64_t d = 3;
  const std::string dir = id_shards("s", {50, 30, 20}, d);
  DataOptions o;
  o.shuffle_buffer = 0;
  o.seed = 7;
  auto s = open_data(dir, o);
  const auto ids = ids_of(read_all(*s, 300), d);
  for (int e = 0; e < 3; ++e) {
    std::vector<int64_t> epoch(ids.begin() + e * 100, ids.begin() + (e + 1) * 100);
    std::sort(epoch.begin(), epoch.end());
    for (int64_t i = 0; i < 100; ++i) ASSERT_EQ(epoch[i], i) << "epoch " << e;
  }
  EXPECT_NE(std::vector<int64_t>(ids.begin(), ids.begin() + 100), std::vector<int64_t>(ids.begin() + 100, ids.begin() + 200))
      << "each epoch draws a fresh permutation";
  // Same seed, same order; another seed, another order.
  auto same = open_data(dir, o);
  EXPECT_EQ(ids_of(read_all(*same, 300), d), ids);
  o.seed = 8;
  auto other = open_data(dir, o);
  EXPECT_NE(ids_of(read_all(*other, 300), d), ids);
}

TEST_F(Data, ShuffleBufferMixesShardsAndCoversEveryRow) {
  const int64_t d = 3;
  // 4 shards of 3000 rows of 3 floats: 12 KB each, so 4 MiB blocks are whole shards; mixing across shards
  // comes from the buffer.
  const std::string dir = id_shards("s", {3000, 3000, 3000, 3000}, d);
  DataOptions o;
  o.shuffle_buffer = 4000;
  o.seed = 3;
  auto s = open_data(dir, o);
  const int64_t N = 12000, m = 3;
  const auto ids = ids_of(read_all(*s, m * N), d);
  // After m*N rows the stream has pulled m*N + S rows (S < N: each row m or m+1 times), so no row was
  // handed out more than m+1 times. A row stays in the buffer a geometric time (mean S rows), so a copy
  // may outlive an epoch and counts can fall below m - 1, but with m = 3 every row shows up (this seed).
  std::vector<int> count(N, 0);
  for (int64_t id : ids) count[id] += 1;
  for (int64_t i = 0; i < N; ++i) ASSERT_TRUE(count[i] >= 1 && count[i] <= m + 1) << "row " << i << ": " << count[i];
  // A batch of 256 rows once the buffer holds two shards draws from both.
  std::set<int64_t> shards_seen;
  for (int64_t r = 3000; r < 3256; ++r) shards_seen.insert(ids[r] / 3000);
  EXPECT_GE(shards_seen.size(), 2u);
  // Not file order.
  int64_t in_order = 0;
  for (int64_t r = 1; r < 1000; ++r) in_order += ids[r] == ids[r - 1] + 1;
  EXPECT_LT(in_order, 50);
}

// Every mode, with and without the reader thread: reading k batches, saving state() (through JSON text),
// reopening and restoring gives exactly the rows the uninterrupted source hands out.
TEST_F(Data, ResumeFromStateIsExactInEveryMode) {
  const int64_t d = 4, B = 64;
  const std::string dir = id_shards("s", {700, 1, 555}, d);
  struct Mode {
    bool shuffle;
    int64_t buffer;
  };
  for (Mode mode : {Mode{false, 0}, Mode{true, 0}, Mode{true, 300}}) {
    for (bool thread : {false, true}) {
      DataOptions o;
      o.shuffle = mode.shuffle;
      o.shuffle_buffer = mode.buffer;
      o.seed = 11;
      o.prefetch_batch = thread ? B : 0;
      auto whole = open_data(dir, o);
      std::vector<float> all(40 * B * d);
      for (int b = 0; b < 40; ++b) whole->next_batch(B, all.data() + b * B * d);
      for (int cut : {0, 1, 13, 25}) {
        auto first = open_data(dir, o);
        std::vector<float> x(B * d);
        for (int b = 0; b < cut; ++b) {
          first->next_batch(B, x.data());
          ASSERT_EQ(0, std::memcmp(x.data(), all.data() + b * B * d, x.size() * 4));
        }
        const std::string text = first->state().dump();
        first.reset();
        auto second = open_data(dir, o);
        second->set_state(nlohmann::json::parse(text));
        for (int b = cut; b < 40; ++b) {
          second->next_batch(B, x.data());
          ASSERT_EQ(0, std::memcmp(x.data(), all.data() + b * B * d, x.size() * 4))
              << "shuffle " << mode.shuffle << " buffer " << mode.buffer << " thread " << thread << " cut " << cut
              << " batch " << b;
        }
        EXPECT_EQ(second->position(), 40 * B);
      }
      // The reader thread hands out the same rows as the synchronous reader.
      DataOptions sync = o;
      sync.prefetch_batch = 0;
      auto plain = open_data(dir, sync);
      std::vector<float> y(40 * B * d);
      plain->next_batch(40 * B, y.data());
      EXPECT_EQ(y, all);
    }
  }
  // A state from other data is refused.
  DataOptions o;
  o.shuffle_buffer = 300;
  auto s = open_data(dir, o);
  const auto st = s->state();
  const std::string other = id_shards("t", {700, 2, 555}, d);
  auto t = open_data(other, o);
  expect_error([&] { t->set_state(st); }, {"does not match the data"});
}

TEST_F(Data, NonfiniteRowsErrorOrAreSkippedAndCounted) {
  const int64_t d = 3;
  const std::string dir = id_shards("s", {100, 100}, d);
  // Poison global rows 17 (shard0 row 17, NaN) and 150 (shard1 row 50, +Inf).
  std::vector<float> x = rows_block(0, 100, d);
  for (int64_t r = 0; r < 100; ++r) x[r * d] = static_cast<float>(r);
  x[17 * d + 2] = std::nanf("");
  msae::io::write_npy(dir + "/shard0.npy", x.data(), {100, d});
  std::vector<float> y = rows_block(100, 100, d);
  for (int64_t r = 0; r < 100; ++r) y[r * d] = static_cast<float>(100 + r);
  y[50 * d + 1] = INFINITY;
  msae::io::write_npy(dir + "/shard1.npy", y.data(), {100, d});

  DataOptions o;
  o.shuffle = false;
  auto e = open_data(dir, o);
  expect_error([&] { read_all(*e, 64); }, {"shard0.npy: row 17 column 2 is nan", "--on-nonfinite skip"});

  for (bool thread : {false, true}) {
    for (int64_t buffer : {int64_t{-2}, int64_t{0}, int64_t{50}}) {  // -2: file order
      DataOptions k;
      k.on_nonfinite = msae::data::OnNonfinite::skip;
      k.shuffle = buffer != -2;
      k.shuffle_buffer = std::max<int64_t>(buffer, 0);
      k.seed = 5;
      k.prefetch_batch = thread ? 20 : 0;
      auto s = open_data(dir, k);
      std::vector<float> all(30 * 20 * d);
      for (int b = 0; b < 30; ++b) s->next_batch(20, all.data() + b * 20 * d);
      for (int64_t id : ids_of(all, d)) ASSERT_TRUE(id != 17 && id != 150);
      for (float v : all) ASSERT_TRUE(std::isfinite(v));
      EXPECT_EQ(s->stats().nonfinite_skipped, 2);
      // Resume across skipped rows stays exact (the shadow planner sees the same rejections).
      auto a = open_data(dir, k);
      std::vector<float> part(20 * d);
      for (int b = 0; b < 7; ++b) a->next_batch(20, part.data());
      const auto st = a->state();
      a.reset();
      auto r = open_data(dir, k);
      r->set_state(st);
      for (int b = 7; b < 30; ++b) {
        r->next_batch(20, part.data());
        ASSERT_EQ(0, std::memcmp(part.data(), all.data() + b * 20 * d, part.size() * 4))
            << "thread " << thread << " buffer " << buffer << " batch " << b;
      }
    }
  }
}

TEST_F(Data, BadShardsNameTheFile) {
  const int64_t d = 4;
  const std::string dir = id_shards("w", {10, 10}, d);
  const std::vector<float> wide = rows_block(0, 5, d + 1);
  msae::io::write_npy(dir + "/shard2.npy", wide.data(), {5, d + 1});
  DataOptions o;
  expect_error([&] { open_data(dir, o); }, {"shard2.npy", "width 5", "shard0.npy", "width 4"});

  const std::string e = id_shards("e", {10}, d);
  msae::io::write_npy(e + "/shard1.npy", nullptr, {0, d});
  expect_error([&] { open_data(e, o); }, {"shard1.npy", "empty shard"});

  // Truncated .npy (data cut short) and truncated raw file (partial last row).
  const std::vector<float> x = rows_block(0, 10, d);
  msae::io::write_npy(p("t.npy"), x.data(), {10, d});
  fs::resize_file(p("t.npy"), fs::file_size(p("t.npy")) - 6);
  expect_error([&] { open_data(p("t.npy"), o); }, {"t.npy"});
  std::ofstream(p("t.bin"), std::ios::binary).write(reinterpret_cast<const char*>(x.data()), 10 * d * 4 - 4);
  o.d_in = d;
  expect_error([&] { open_data(p("t.bin"), o); }, {"t.bin", "truncated", "row 9 is incomplete"});
  o.d_in = 0;
  expect_error([&] { open_data(p("t.bin"), o); }, {"t.bin", "--d-in"});
}

TEST(DataNorm, ExpectedNormScaleMakesTheMeanNormSqrtD) {
  const int64_t n = 1000, d = 16;
  std::vector<float> x(n * d);
  msae::Rng rng(1);
  for (float& v : x) v = static_cast<float>(rng.normal() * 5.0 + 2.0);
  DataOptions o;
  o.shuffle = false;
  auto s = msae::data::open_array(x.data(), n, d, "array", o);
  const double scale = msae::data::estimate_norm_scale(*s, n);
  double mean_norm = 0;
  for (int64_t r = 0; r < n; ++r) {
    double sq = 0;
    for (int64_t j = 0; j < d; ++j) sq += double(x[r * d + j]) * x[r * d + j] * scale * scale;
    mean_norm += std::sqrt(sq) / n;
  }
  EXPECT_NEAR(mean_norm, std::sqrt(double(d)), 1e-9 * std::sqrt(double(d)));
  // The source applies the scale.
  o.scale = static_cast<float>(scale);
  auto scaled = msae::data::open_array(x.data(), n, d, "array", o);
  const auto y = read_all(*scaled, 3);
  for (int64_t i = 0; i < 3 * d; ++i) EXPECT_EQ(y[i], x[i] * static_cast<float>(scale));
}

}  // namespace
