// Unit tests for msae io: half/bf16 conversions, .npy and .safetensors round trips and hand-crafted
// files, every malformed-input path (each must throw msae::Error naming the file), and fs helpers.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "msae/io.h"

namespace {

namespace io = msae::io;
namespace stdfs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

// A fresh directory per test, removed afterwards.
class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (stdfs::temp_directory_path() / "msae_test_io_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    stdfs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (stdfs::path(dir_) / name).string(); }

  std::string dir_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string le_bytes(uint64_t v, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

template <class T>
std::string raw_bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// A .npy file with a hand-written header dict (no padding rules enforced, so odd offsets get tested).
std::string npy_file(const std::string& dict, const std::string& data, int major = 1) {
  const std::string header = dict + "\n";
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0';
  out += le_bytes(header.size(), major == 1 ? 2 : 4);
  return out + header + data;
}

// A .safetensors file from a header text and the data section.
std::string st_file(const std::string& header, const std::string& data) {
  return le_bytes(header.size(), 8) + header + data;
}

// Runs fn, which must throw msae::Error with `code` and a message naming `path` and each of `parts`.
void expect_error(const std::function<void()>& fn, int code, const std::string& path,
                  std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const msae::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.exit_code(), code) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    for (const std::string& part : parts) {
      EXPECT_NE(msg.find(part), std::string::npos) << "message lacks '" << part << "': " << msg;
    }
    return;
  }
  ADD_FAILURE() << "no msae::Error thrown for " << path;
}

void expect_npy_error(const std::string& path, std::initializer_list<std::string> parts, bool bf16 = false) {
  expect_error([&] { io::read_npy_header(path, bf16); }, 1, path, parts);
  expect_error([&] { io::read_npy(path, bf16); }, 1, path, parts);
  expect_error([&] { io::NpyRows rows(path, bf16); }, 1, path, parts);
}

void expect_st_error(const std::string& path, std::initializer_list<std::string> parts) {
  expect_error([&] { io::read_safetensors(path); }, 1, path, parts);
}

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

// ---------------------------------------------------------------------------------------------
// conversions
// ---------------------------------------------------------------------------------------------
TEST(Convert, DTypeNamesAndSizes) {
  EXPECT_STREQ(io::dtype_name(io::DType::f32), "float32");
  EXPECT_STREQ(io::dtype_name(io::DType::f16), "float16");
  EXPECT_STREQ(io::dtype_name(io::DType::bf16), "bfloat16");
  EXPECT_EQ(io::dtype_size(io::DType::f32), 4);
  EXPECT_EQ(io::dtype_size(io::DType::f16), 2);
  EXPECT_EQ(io::dtype_size(io::DType::bf16), 2);
}

TEST(Convert, HalfToFloatSpecialValues) {
  EXPECT_EQ(bits(io::half_to_float(0x0000)), 0x00000000u);
  EXPECT_EQ(bits(io::half_to_float(0x8000)), 0x80000000u);  // -0 keeps its sign
  EXPECT_EQ(io::half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(io::half_to_float(0xc000), -2.0f);
  EXPECT_EQ(io::half_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(io::half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(io::half_to_float(0x0400), std::ldexp(1.0f, -14));    // smallest normal
  EXPECT_EQ(io::half_to_float(0x0001), std::ldexp(1.0f, -24));    // smallest subnormal
  EXPECT_EQ(io::half_to_float(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(io::half_to_float(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(io::half_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(io::half_to_float(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(io::half_to_float(0x7e00)));
  EXPECT_TRUE(std::isnan(io::half_to_float(0x7c01)));  // signalling NaN with the smallest payload
  EXPECT_TRUE(std::isnan(io::half_to_float(0xffff)));
}

// Every half value, against a formula evaluated independently in double.
TEST(Convert, HalfToFloatExhaustive) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const int sign = (h >> 15) ? -1 : 1;
    const int exp = (h >> 10) & 0x1f;
    const int mant = h & 0x3ff;
    if (exp == 0x1f) continue;  // covered above
    const double expected = exp == 0 ? sign * std::ldexp(double(mant), -24)
                                     : sign * std::ldexp(1.0 + mant / 1024.0, exp - 15);
    ASSERT_EQ(double(io::half_to_float(static_cast<uint16_t>(h))), expected) << std::hex << h;
  }
}

TEST(Convert, FloatToHalfRoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = io::half_to_float(static_cast<uint16_t>(h));
    const uint16_t back = io::float_to_half(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(io::half_to_float(back))) << std::hex << h;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << "NaN sign";
    } else {
      ASSERT_EQ(back, h) << std::hex << h;
    }
  }
}

// Between each pair of adjacent halves: just below the midpoint rounds down, just above rounds up, and
// the midpoint itself (exact in float) rounds to the even encoding.
TEST(Convert, FloatToHalfRoundsToNearestEven) {
  for (uint16_t h = 0; h < 0x7bff; ++h) {
    const float a = io::half_to_float(h), b = io::half_to_float(static_cast<uint16_t>(h + 1));
    const float mid = (a + b) / 2;
    ASSERT_EQ(double(mid), (double(a) + double(b)) / 2) << "midpoint not exact";
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : h;
    ASSERT_EQ(io::float_to_half(mid), even) << std::hex << h;
    ASSERT_EQ(io::float_to_half(std::nextafter(mid, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(io::float_to_half(std::nextafter(mid, 1e9f)), h + 1) << std::hex << h;
    ASSERT_EQ(io::float_to_half(-mid), even | 0x8000) << std::hex << h;
  }
}

TEST(Convert, FloatToHalfEdges) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(io::float_to_half(65520.0f), 0x7c00);  // tie between 65504 (odd) and 2^16: overflows to inf
  EXPECT_EQ(io::float_to_half(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(io::float_to_half(1e10f), 0x7c00);
  EXPECT_EQ(io::float_to_half(-1e10f), 0xfc00);
  EXPECT_EQ(io::float_to_half(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(io::float_to_half(inf), 0x7c00);
  EXPECT_EQ(io::float_to_half(-inf), 0xfc00);
  EXPECT_EQ(io::float_to_half(0.0f), 0x0000);
  EXPECT_EQ(io::float_to_half(-0.0f), 0x8000);
  EXPECT_EQ(io::float_to_half(std::ldexp(1.0f, -25)), 0x0000);  // tie with the odd 0x0001: to zero
  EXPECT_EQ(io::float_to_half(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(io::float_to_half(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp: tie, to even 2
  EXPECT_EQ(io::float_to_half(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(io::float_to_half(-std::numeric_limits<float>::denorm_min()), 0x8000);
  // Largest subnormal + half an ulp: tie between 0x03ff (odd) and 0x0400 (the smallest normal).
  EXPECT_EQ(io::float_to_half(std::ldexp(1023.5f, -24)), 0x0400);
  // NaNs stay NaN, including ones whose payload sits only in the bits the conversion drops.
  for (uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0x7f801000u}) {
    const uint16_t h = io::float_to_half(std::bit_cast<float>(nan_bits));
    EXPECT_EQ(h & 0x7c00, 0x7c00) << std::hex << nan_bits;
    EXPECT_NE(h & 0x03ff, 0) << std::hex << nan_bits << " became inf";
    EXPECT_EQ(h & 0x8000, (nan_bits >> 16) & 0x8000);
  }
}

TEST(Convert, Bf16) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = io::bf16_to_float(static_cast<uint16_t>(b));
    ASSERT_EQ(bits(f), b << 16);
    if (!std::isnan(f)) {
      ASSERT_EQ(io::float_to_bf16(f), b) << std::hex << b;
    }
  }
  EXPECT_EQ(io::bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(io::float_to_bf16(1.0f), 0x3f80);
  // Ties to even: 1 + 2^-8 lies halfway between 0x3f80 (even) and 0x3f81; 1 + 3*2^-8 between 0x3f81, 0x3f82.
  EXPECT_EQ(io::float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(io::float_to_bf16(1.0f + std::ldexp(3.0f, -8)), 0x3f82);
  EXPECT_EQ(io::float_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3f81);
  EXPECT_EQ(io::float_to_bf16(-(1.0f + std::ldexp(1.0f, -8))), 0xbf80);
  EXPECT_EQ(io::float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // above the last midpoint
  EXPECT_EQ(io::float_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(io::float_to_bf16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(io::float_to_bf16(-0.0f), 0x8000);
  for (uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    const uint16_t b = io::float_to_bf16(std::bit_cast<float>(nan_bits));
    EXPECT_TRUE(std::isnan(io::bf16_to_float(b))) << std::hex << nan_bits << " -> " << b;
  }
}

TEST(Convert, ConvertToF32FromUnalignedSource) {
  const std::vector<float> values = {0.0f, -1.5f, 3.25f, 65504.0f, std::ldexp(1.0f, -24)};
  std::string half_buf = "x", bf_buf = "x", f32_buf = "x";  // one leading byte: misaligned on purpose
  for (float v : values) {
    const uint16_t h = io::float_to_half(v), b = io::float_to_bf16(v);
    half_buf.append(reinterpret_cast<const char*>(&h), 2);
    bf_buf.append(reinterpret_cast<const char*>(&b), 2);
    f32_buf.append(reinterpret_cast<const char*>(&v), 4);
  }
  std::vector<float> out(values.size());
  io::convert_to_f32(io::DType::f16, half_buf.data() + 1, out.data(), static_cast<int64_t>(values.size()));
  EXPECT_EQ(out, values);
  io::convert_to_f32(io::DType::f32, f32_buf.data() + 1, out.data(), static_cast<int64_t>(values.size()));
  EXPECT_EQ(out, values);
  io::convert_to_f32(io::DType::bf16, bf_buf.data() + 1, out.data(), 3);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], -1.5f);
  EXPECT_EQ(out[2], 3.25f);
}

// ---------------------------------------------------------------------------------------------
// .npy: round trips and hand-written files
// ---------------------------------------------------------------------------------------------
std::vector<float> ramp(int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = 0.25f * static_cast<float>(i) - 3.0f;
  return v;
}

TEST_F(IoTest, NpyRoundTripF32AllRanks) {
  const std::vector<std::vector<int64_t>> shapes = {{3, 5}, {7}, {}, {2, 3, 4}, {0, 4}, {1, 1}};
  for (const auto& shape : shapes) {
    const std::string p = path("a.npy");
    const std::vector<float> data = ramp(msae::numel(shape));
    io::write_npy(p, data.data(), shape);
    EXPECT_FALSE(stdfs::exists(p + ".tmp")) << "temporary left behind";
    const io::NpyHeader h = io::read_npy_header(p);
    EXPECT_EQ(h.dtype, io::DType::f32);
    EXPECT_EQ(h.shape, shape);
    EXPECT_EQ(h.data_offset % 64, 0) << "data must be 64-byte aligned like numpy.save";
    EXPECT_EQ(static_cast<int64_t>(stdfs::file_size(p)), h.data_offset + 4 * msae::numel(shape));
    const msae::Tensor t = io::read_npy(p);
    EXPECT_EQ(t.shape, shape);
    EXPECT_EQ(std::vector<float>(t.data.begin(), t.data.end()), data) << msae::shape_str(shape);
  }
}

// io::NpyWriter streams the data after the header, in pieces of any size; each dtype it writes reads back
// exactly through io's readers, and the file is exactly header + data.
TEST_F(IoTest, NpyWriterStreamsRoundTrip) {
  const std::vector<float> f = {1.5f, -2.0f, 0.0f, 3.25f, 1e-30f, -7.0f};  // (3, 2)
  {
    io::NpyWriter w(path("f.npy"), "<f4", {3, 2});
    EXPECT_EQ(w.bytes_expected(), 24);
    w.write(f.data(), 4);                   // a partial element: the writer counts bytes, not rows
    w.write(reinterpret_cast<const char*>(f.data()) + 4, 12);
    w.write(f.data() + 4, 0);               // an empty write is allowed
    w.write(f.data() + 4, 8);
    EXPECT_EQ(w.bytes_written(), 24);
    w.close();
  }
  const msae::Tensor t = io::read_npy(path("f.npy"));
  EXPECT_EQ(t.shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(std::vector<float>(t.data.begin(), t.data.end()), f);
  EXPECT_EQ(static_cast<int64_t>(stdfs::file_size(path("f.npy"))), io::read_npy_header(path("f.npy")).data_offset + 24);

  const std::vector<int64_t> i8 = {0, -1, int64_t{1} << 40, 7, 8, -9, 10, 11};  // (2, 4)
  {
    io::NpyWriter w(path("i8.npy"), "<i8", {2, 4});
    w.write(i8.data(), 4 * 8);
    w.write(i8.data() + 4, 4 * 8);
    w.close();
  }
  const io::NpyIntArray a = io::read_npy_int(path("i8.npy"));
  EXPECT_EQ(a.itemsize, 8);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(a.values, i8);

  const std::vector<int32_t> i4 = {5, -6, 2147483647};  // (3,)
  {
    io::NpyWriter w(path("i4.npy"), "<i4", {3});
    w.write(i4.data(), 12);
    w.close();
  }
  const io::NpyIntArray b = io::read_npy_int(path("i4.npy"));
  EXPECT_EQ(b.itemsize, 4);
  EXPECT_EQ(b.shape, std::vector<int64_t>{3});
  EXPECT_EQ(b.values, (std::vector<int64_t>{5, -6, 2147483647}));

  // float16: values that binary16 holds exactly read back as the same floats
  const std::vector<float> hv = {0.5f, -1.25f, 2048.0f, 0.0f};  // (2, 2)
  std::vector<uint16_t> h;
  for (float v : hv) h.push_back(io::float_to_half(v));
  {
    io::NpyWriter w(path("h.npy"), "<f2", {2, 2});
    w.write(h.data(), 8);
    w.close();
  }
  EXPECT_EQ(io::read_npy_header(path("h.npy")).dtype, io::DType::f16);
  const msae::Tensor th = io::read_npy(path("h.npy"));
  EXPECT_EQ(std::vector<float>(th.data.begin(), th.data.end()), hv);

  // An empty array is a header alone, and closes with nothing written.
  {
    io::NpyWriter w(path("empty.npy"), "<f4", {0, 5});
    w.close();
  }
  EXPECT_EQ(io::read_npy(path("empty.npy")).shape, (std::vector<int64_t>{0, 5}));
}

// Fewer bytes than the shape promised is refused on close, more on the write that overflows (msae's own
// bugs: MSAE_ASSERT); a file that cannot be created is a runtime error naming it.
TEST_F(IoTest, NpyWriterRefusesShortAndLongWrites) {
  const std::vector<float> v(8, 1.0f);
  EXPECT_DEATH(
      {
        io::NpyWriter w(path("short.npy"), "<f4", {2, 4});
        w.write(v.data(), 7 * 4);
        w.close();
      },
      "wrote 28 bytes, promised 32");
  EXPECT_DEATH(
      {
        io::NpyWriter w(path("long.npy"), "<f4", {2, 3});
        w.write(v.data(), 4 * 4);
        w.write(v.data(), 4 * 4);
      },
      "writing 16 bytes after 16 of the 24 promised");
  EXPECT_DEATH(io::NpyWriter(path("bad.npy"), "<f8", {2}), "unsupported descr");
  try {
    io::NpyWriter w(path("no/such/dir/x.npy"), "<f4", {1});
    ADD_FAILURE() << "created a file in a missing directory";
  } catch (const msae::Error& e) {
    EXPECT_EQ(e.kind(), msae::ErrorKind::runtime);
    EXPECT_NE(std::string(e.what()).find("no/such/dir/x.npy: cannot create"), std::string::npos) << e.what();
  }
}

// The writer's header must be what numpy.save writes, so numpy (and np.load(mmap_mode='r')) reads it.
TEST_F(IoTest, NpyWriterHeaderMatchesNumpyLayout) {
  const std::string p = path("b.npy");
  io::write_npy(p, msae::Tensor({2, 3}));
  std::string bytes = read_bytes(p);
  ASSERT_GE(bytes.size(), 128u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
  EXPECT_EQ(header_len, 118u);
  const std::string header = bytes.substr(10, header_len);
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  EXPECT_EQ(header.substr(0, dict.size()), dict);
  EXPECT_EQ(header.back(), '\n');
  EXPECT_EQ(header.find_first_not_of(' ', dict.size()), header_len - 1) << "padding must be spaces";
  io::write_npy(p, ramp(4).data(), {4});
  bytes = read_bytes(p);
  EXPECT_NE(bytes.find("'shape': (4,), }"), std::string::npos) << "1-D shapes need the tuple comma";
  // Overwriting replaced the file (and the shape changed with it).
  EXPECT_EQ(io::read_npy_header(p).shape, std::vector<int64_t>{4});
}

TEST_F(IoTest, NpyHandWrittenF16AllVersionsAndHeaderStyles) {
  const std::vector<uint16_t> halves = {0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x8000};  // 1 -2 .5 65504 2^-24 -0
  const std::vector<float> expected = {1.0f, -2.0f, 0.5f, 65504.0f, std::ldexp(1.0f, -24), -0.0f};
  const std::vector<std::string> dicts = {
      "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }",
      "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f2'}",                       // other order
      "  {  \"descr\" :'<f2' ,'fortran_order':False,'shape':( 2 ,3 , ) , }   ",         // whitespace, commas
      "{'descr': '<f2', 'fortran_order': False, 'shape': (2L, 3L)}",                    // Python 2 longs
  };
  for (int major : {1, 2, 3}) {
    for (const std::string& dict : dicts) {
      const std::string p = path("h.npy");
      write_bytes(p, npy_file(dict, raw_bytes(halves), major));
      const io::NpyHeader h = io::read_npy_header(p);
      EXPECT_EQ(h.dtype, io::DType::f16) << dict;
      EXPECT_EQ(h.shape, (std::vector<int64_t>{2, 3})) << dict;
      EXPECT_EQ(h.data_offset, (major == 1 ? 10 : 12) + static_cast<int64_t>(dict.size()) + 1);
      const msae::Tensor t = io::read_npy(p);
      ASSERT_EQ(t.numel(), 6);
      for (int i = 0; i < 6; ++i) EXPECT_EQ(bits(t.data[i]), bits(expected[i])) << "element " << i << " of " << dict;
    }
  }
}

TEST_F(IoTest, NpyOneDimAndScalarShapes) {
  const std::string p = path("v.npy");
  const std::vector<float> v = {1.0f, 2.0f, 3.0f};
  write_bytes(p, npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", raw_bytes(v)));
  EXPECT_EQ(io::read_npy_header(p).shape, std::vector<int64_t>{3});
  write_bytes(p, npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3), }", raw_bytes(v)));
  EXPECT_EQ(io::read_npy_header(p).shape, std::vector<int64_t>{3});
  write_bytes(p, npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", raw_bytes(v).substr(0, 4)));
  const msae::Tensor s = io::read_npy(p);
  EXPECT_TRUE(s.shape.empty());
  ASSERT_EQ(s.numel(), 1);
  EXPECT_EQ(s.data[0], 1.0f);
}

TEST_F(IoTest, NpyBf16AsU2OnlyWithFlag) {
  const std::string p = path("bf.npy");
  const std::vector<uint16_t> raw = {0x3f80, 0xc040, 0x7f80, 0x0000};  // 1, -3, inf, 0
  write_bytes(p, npy_file("{'descr': '<u2', 'fortran_order': False, 'shape': (2, 2), }", raw_bytes(raw)));
  const msae::Tensor t = io::read_npy(p, /*bf16_as_u2=*/true);
  EXPECT_EQ(io::read_npy_header(p, true).dtype, io::DType::bf16);
  EXPECT_EQ(t.data[0], 1.0f);
  EXPECT_EQ(t.data[1], -3.0f);
  EXPECT_TRUE(std::isinf(t.data[2]));
  EXPECT_EQ(t.data[3], 0.0f);
  expect_npy_error(p, {"'<u2'", "bf16"}, /*bf16=*/false);
}

TEST_F(IoTest, NpyTrailingBytesAreAllowed) {
  const std::string p = path("t.npy");
  const std::vector<float> v = {1.0f, 2.0f, 3.0f, 4.0f};
  write_bytes(p, npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }", raw_bytes(v)));
  const msae::Tensor t = io::read_npy(p);
  EXPECT_EQ(t.numel(), 3);
  EXPECT_EQ(t.data[2], 3.0f);
}

// ---------------------------------------------------------------------------------------------
// NpyRows
// ---------------------------------------------------------------------------------------------
TEST_F(IoTest, NpyRowsReadAndGatherF32) {
  const std::string p = path("rows.npy");
  const int64_t n = 9, d = 4;
  const std::vector<float> data = ramp(n * d);
  io::write_npy(p, data.data(), {n, d});
  io::NpyRows rows(p);
  EXPECT_EQ(rows.rows(), n);
  EXPECT_EQ(rows.cols(), d);
  EXPECT_EQ(rows.dtype(), io::DType::f32);
  EXPECT_EQ(rows.path(), p);

  std::vector<float> out(3 * d, -99.0f);
  rows.read_rows(5, 3, out.data());
  for (int64_t i = 0; i < 3 * d; ++i) EXPECT_EQ(out[i], data[5 * d + i]) << i;
  rows.read_rows(0, 0, out.data());  // empty range is fine
  rows.read_rows(n - 1, 1, out.data());
  for (int64_t j = 0; j < d; ++j) EXPECT_EQ(out[j], data[(n - 1) * d + j]);

  const std::vector<int64_t> idx = {8, 0, 3, 3};
  std::vector<float> g(idx.size() * d);
  rows.gather_rows(idx.data(), static_cast<int64_t>(idx.size()), g.data());
  for (size_t i = 0; i < idx.size(); ++i) {
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(g[i * d + j], data[idx[i] * d + j]) << i << "," << j;
  }
}

TEST_F(IoTest, NpyRowsF16WithOddDataOffset) {
  const std::string p = path("rows16.npy");
  std::vector<uint16_t> raw;
  for (int i = 0; i < 12; ++i) raw.push_back(io::float_to_half(static_cast<float>(i) - 5.5f));
  // A 60-character dict + '\n' puts the data at byte 71: unaligned for any element type.
  const std::string dict = "{'descr': '<f2', 'fortran_order': False, 'shape': (4, 3)}";
  write_bytes(p, npy_file(dict + std::string(60 - dict.size(), ' '), raw_bytes(raw)));
  io::NpyRows rows(p);
  EXPECT_EQ(rows.dtype(), io::DType::f16);
  EXPECT_EQ(rows.rows(), 4);
  EXPECT_EQ(rows.cols(), 3);
  std::vector<float> out(6);
  rows.read_rows(2, 2, out.data());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(out[i], static_cast<float>(6 + i) - 5.5f);
  const int64_t idx[] = {3, 1};
  rows.gather_rows(idx, 2, out.data());
  EXPECT_EQ(out[0], 9.0f - 5.5f);
  EXPECT_EQ(out[3], 3.0f - 5.5f);
}

TEST_F(IoTest, NpyRowsRequiresTwoDims) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{6}, {1, 2, 3}, {}}) {
    const std::string p = path("r.npy");
    io::write_npy(p, ramp(msae::numel(shape)).data(), shape);
    expect_error([&] { io::NpyRows rows(p); }, 1, p, {"2-D", msae::shape_str(shape)});
    EXPECT_NO_THROW(io::read_npy(p)) << "read_npy takes any rank";
  }
}

TEST_F(IoTest, NpyRowsOutOfBoundsIsABug) {
  // Default "fast" death tests fork at the statement, so the child reuses this test's temp dir.
  const std::string p = path("oob.npy");
  io::write_npy(p, ramp(8).data(), {4, 2});
  io::NpyRows rows(p);
  std::vector<float> out(16);
  const int64_t bad[] = {0, 4};
  EXPECT_DEATH(rows.gather_rows(bad, 2, out.data()), "assertion");
  const int64_t negative[] = {-1};
  EXPECT_DEATH(rows.gather_rows(negative, 1, out.data()), "assertion");
  EXPECT_DEATH(rows.read_rows(3, 2, out.data()), "assertion");
  EXPECT_DEATH(rows.read_rows(-1, 1, out.data()), "assertion");
}

// ---------------------------------------------------------------------------------------------
// .npy: malformed input
// ---------------------------------------------------------------------------------------------
const std::string kF4Dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
const std::string kF4Data(16, '\0');

TEST_F(IoTest, NpyMissingFile) { expect_npy_error(path("nope.npy"), {"no such file"}); }

TEST_F(IoTest, NpyDirectoryInsteadOfFile) { expect_npy_error(dir_, {"directory"}); }

TEST_F(IoTest, NpyEmptyFile) {
  write_bytes(path("e.npy"), "");
  expect_npy_error(path("e.npy"), {"empty", "0 bytes"});
}

TEST_F(IoTest, NpyShortOrBadMagic) {
  write_bytes(path("m.npy"), "\x93NUM");
  expect_npy_error(path("m.npy"), {"magic", "found '\\x93NUM'"});
  write_bytes(path("m.npy"), "PK\x03\x04 this is a zip file, not npy");
  expect_npy_error(path("m.npy"), {"not a .npy file", "magic"});
  write_bytes(path("m.npy"), std::string("\x93NUMPY", 6));  // magic only, no version
  expect_npy_error(path("m.npy"), {"truncated"});
}

TEST_F(IoTest, NpyBadVersion) {
  std::string f = npy_file(kF4Dict, kF4Data);
  f[6] = 4;
  write_bytes(path("v.npy"), f);
  expect_npy_error(path("v.npy"), {"version 4.0", "expected 1.0, 2.0 or 3.0"});
  f[6] = 1;
  f[7] = 1;
  write_bytes(path("v.npy"), f);
  expect_npy_error(path("v.npy"), {"version 1.1"});
}

TEST_F(IoTest, NpyTruncatedHeader) {
  // The length field itself is cut off (v1 needs bytes 8..9, v2 needs 8..11).
  write_bytes(path("t.npy"), std::string("\x93NUMPY\x01\x00\x10", 9));
  expect_npy_error(path("t.npy"), {"truncated .npy header", "9 bytes"});
  write_bytes(path("t.npy"), std::string("\x93NUMPY\x02\x00\x10\x00", 10));
  expect_npy_error(path("t.npy"), {"truncated .npy header"});
  // The header text is cut off.
  const std::string full = npy_file(kF4Dict, kF4Data);
  write_bytes(path("t.npy"), full.substr(0, 30));
  expect_npy_error(path("t.npy"), {"runs to byte", "only 30 bytes"});
}

TEST_F(IoTest, NpyHeaderLengthBeyondEofOrAbsurd) {
  std::string f = npy_file(kF4Dict, kF4Data);
  f[8] = '\xff';
  f[9] = '\xff';  // 65535 > file size
  write_bytes(path("l.npy"), f);
  expect_npy_error(path("l.npy"), {"header length 65535", "runs to byte"});
  // Version 2 with a 4 GiB - 1 header length: refused before any allocation.
  std::string g = npy_file(kF4Dict, kF4Data, 2);
  g.replace(8, 4, le_bytes(0xffffffffu, 4));
  write_bytes(path("l.npy"), g);
  expect_npy_error(path("l.npy"), {"header length 4294967295", "limit"});
}

TEST_F(IoTest, NpyMalformedDicts) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "malformed"},
      {"'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)", "expected '{'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)", "expected ',' or '}'"},
      {"{'descr': '<f4' 'fortran_order': False, 'shape': (2, 2)}", "expected ',' or '}'"},
      {"{'descr: '<f4', 'fortran_order': False, 'shape': (2, 2)}", "malformed"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (2, 2)}", "malformed"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)} junk", "end of the header"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2 2)}", "in the shape tuple"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}", "expected an integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (,)}", "expected an integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2}", "malformed"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 2]}", "malformed"},
      {"{'descr': '<f4', 'fortran_order': false, 'shape': (2, 2)}", "malformed"},
      {"{'descr': '<f4', 'fortran_order': False}", "'shape' is missing"},
      {"{'fortran_order': False, 'shape': (2, 2)}", "'descr' is missing"},
      {"{'descr': '<f4', 'shape': (2, 2)}", "'fortran_order' is missing"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)}", "duplicate key 'descr'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), 'extra': True}", "unexpected key 'extra'"},
      {"{'descr': (2,), 'fortran_order': False, 'shape': (2, 2)}", "'descr' must be"},
      {"{'descr': '<f4', 'fortran_order': 'no', 'shape': (2, 2)}", "'fortran_order' must be"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': '2, 2'}", "'shape' must be"},
      {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}", "structured dtypes"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 1)}", "64 bits"},
      {std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)}\0", 58), "malformed"},
  };
  for (const auto& [dict, part] : cases) {
    SCOPED_TRACE(dict);
    const std::string p = path("d.npy");
    write_bytes(p, npy_file(dict, kF4Data));
    expect_npy_error(p, {part});
  }
}

TEST_F(IoTest, NpyUnsupportedDtypes) {
  for (const std::string descr : {"<f8", "<i4", "|u1", "|b1", "<c8", "=f4", "|f4", "O"}) {
    SCOPED_TRACE(descr);
    const std::string p = path("dt.npy");
    write_bytes(p, npy_file("{'descr': '" + descr + "', 'fortran_order': False, 'shape': (2, 2), }",
                            std::string(64, '\0')));
    expect_npy_error(p, {"unsupported dtype '" + descr + "'", "'<f4' (float32) or '<f2' (float16)", "hint"});
  }
}

TEST_F(IoTest, NpyBigEndian) {
  for (const std::string descr : {">f4", ">f2", ">u2"}) {
    const std::string p = path("be.npy");
    write_bytes(p, npy_file("{'descr': '" + descr + "', 'fortran_order': False, 'shape': (2, 2), }", kF4Data));
    expect_npy_error(p, {"big-endian", descr, "newbyteorder"}, /*bf16=*/true);
  }
}

TEST_F(IoTest, NpyFortranOrder) {
  const std::string p = path("f.npy");
  write_bytes(p, npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", kF4Data));
  expect_npy_error(p, {"Fortran", "ascontiguousarray"});
}

TEST_F(IoTest, NpyNegativeAndOverflowingShapes) {
  const std::string p = path("s.npy");
  write_bytes(p, npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 2), }", kF4Data));
  expect_npy_error(p, {"negative dimension -2"});
  // Each dim fits in int64 but the product does not; a naive product would wrap to a small number.
  write_bytes(p, npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4), }",
                          kF4Data));
  expect_npy_error(p, {"more elements than fit in 64 bits"});
  write_bytes(p, npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775807, 1), }",
                          kF4Data));
  expect_npy_error(p, {"64 bits"});
}

TEST_F(IoTest, NpyTruncatedData) {
  const std::string p = path("td.npy");
  const std::string f = npy_file(kF4Dict, kF4Data.substr(0, 10));  // needs 16 data bytes, has 10
  write_bytes(p, f);
  expect_npy_error(p, {"truncated data", "needs 16 bytes", "found 10"});
  // A shape that would need terabytes: rejected by the size check, never allocated.
  write_bytes(p, npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000), }", kF4Data));
  expect_npy_error(p, {"needs 4000000000000 bytes", "found 16"});
}

// Integer arrays (io::read_npy_int / write_npy_int): '<i4' and '<i8' by hand and round trip, all three
// format versions, the header layout numpy writes, and the errors (float dtype, other integer types,
// big-endian, truncated data). The float readers keep rejecting integer arrays.
TEST_F(IoTest, NpyIntHandWrittenAndRoundTrip) {
  const std::vector<int32_t> i4 = {0, -1, 50256, INT32_MIN, INT32_MAX, 7};
  const std::vector<int64_t> i8 = {0, -1, int64_t{1} << 40, INT64_MIN, INT64_MAX, 7};
  for (int major : {1, 2, 3}) {
    const std::string p = path("i.npy");
    write_bytes(p, npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", raw_bytes(i4), major));
    io::NpyIntArray a = io::read_npy_int(p);
    EXPECT_EQ(a.itemsize, 4);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
    ASSERT_EQ(a.values.size(), 6u);
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(a.values[i], i4[i]) << i;
    write_bytes(p, npy_file("{'shape': (6,), 'descr': '<i8', 'fortran_order': False}", raw_bytes(i8), major));
    a = io::read_npy_int(p);
    EXPECT_EQ(a.itemsize, 8);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{6}));
    EXPECT_EQ(a.values, i8);
  }
  // Writers: numpy's layout (64-byte aligned data, the descr) and a round trip; more than one read chunk.
  std::vector<int32_t> big(200000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<int32_t>(i * 2654435761u);
  const std::string p = path("w.npy");
  io::write_npy_int(p, big.data(), {100000, 2});
  const std::string bytes = read_bytes(p);
  EXPECT_NE(bytes.find("{'descr': '<i4', 'fortran_order': False, 'shape': (100000, 2), }"), std::string::npos);
  EXPECT_EQ(bytes.size(), 128u + big.size() * 4);
  io::NpyIntArray a = io::read_npy_int(p);
  ASSERT_EQ(a.values.size(), big.size());
  for (size_t i = 0; i < big.size(); ++i) ASSERT_EQ(a.values[i], big[i]) << i;
  io::write_npy_int(p, i8.data(), {3, 2});
  a = io::read_npy_int(p);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(a.values, i8);
  // The float readers reject it, as before.
  expect_npy_error(p, {"unsupported dtype '<i8'"});
}

TEST_F(IoTest, NpyIntErrors) {
  const std::string p = path("ie.npy");
  auto expect_int_error = [&](std::initializer_list<std::string> parts) {
    expect_error([&] { io::read_npy_int(p); }, 1, p, parts);
  };
  for (const std::string descr : {"<f4", "<f2", "<u2", "<i2", "|i1", "<u8", "<f8"}) {
    SCOPED_TRACE(descr);
    write_bytes(p, npy_file("{'descr': '" + descr + "', 'fortran_order': False, 'shape': (2, 2), }", std::string(64, '\0')));
    expect_int_error({"dtype '" + descr + "' is not supported", "'<i4' (int32) or '<i8' (int64)", "hint"});
  }
  write_bytes(p, npy_file("{'descr': '>i8', 'fortran_order': False, 'shape': (2,), }", std::string(16, '\0')));
  expect_int_error({"big-endian", "'>i8'"});
  write_bytes(p, npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", std::string(16, '\0')));
  expect_int_error({"truncated data", "int64", "needs 24 bytes"});
  write_bytes(p, npy_file("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 2), }", std::string(16, '\0')));
  expect_int_error({"Fortran"});
  expect_error([&] { io::read_npy_int(path("missing.npy")); }, 1, path("missing.npy"), {"no such file"});
}

TEST_F(IoTest, NpyWriteIntoMissingDirectory) {
  const std::string p = path("no/such/dir/x.npy");
  expect_error([&] { io::write_npy(p, ramp(2).data(), {2}); }, 1, p, {"cannot create"});
}

// ---------------------------------------------------------------------------------------------
// .safetensors: round trips and hand-crafted files
// ---------------------------------------------------------------------------------------------
TEST_F(IoTest, SafetensorsRoundTripWithMetadata) {
  const std::string p = path("w.safetensors");
  const std::vector<float> w_enc = ramp(12), b_dec = ramp(3), empty;
  const float scale = 0.125f;
  const std::vector<io::TensorRef> tensors = {
      {"W_enc", {3, 4}, w_enc.data()},
      {"b_dec", {3}, b_dec.data()},
      {"scale", {}, &scale},
      {"nothing", {0, 5}, nullptr},
      {"a_last_alphabetically_first_in_file", {2}, w_enc.data() + 10},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"groups", "[4, 8]"}, {"empty", ""}};
  io::write_safetensors(p, tensors, meta);
  EXPECT_FALSE(stdfs::exists(p + ".tmp"));

  const io::SafetensorsFile f = io::read_safetensors(p);
  EXPECT_EQ(f.metadata, meta);
  ASSERT_EQ(f.tensors.size(), tensors.size());
  for (const io::TensorRef& t : tensors) {
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(f.tensors.count(t.name));
    const msae::Tensor& got = f.tensors.at(t.name);
    EXPECT_EQ(got.shape, t.shape);
    ASSERT_EQ(got.numel(), msae::numel(t.shape));
    for (int64_t i = 0; i < got.numel(); ++i) EXPECT_EQ(got.data[i], t.data[i]);
    EXPECT_EQ(f.stored_dtypes.at(t.name), io::DType::f32);
  }

  // Layout: header padded with spaces to an 8-byte boundary; data in the order given, contiguous.
  const std::string bytes = read_bytes(p);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  EXPECT_EQ(header.find_first_not_of(' ', header.rfind('}') + 1), std::string::npos);
  const json j = json::parse(header);
  int64_t offset = 0;
  for (const io::TensorRef& t : tensors) {
    EXPECT_EQ(j[t.name]["dtype"], "F32");
    EXPECT_EQ(j[t.name]["data_offsets"][0].get<int64_t>(), offset) << t.name;
    offset += 4 * msae::numel(t.shape);
    EXPECT_EQ(j[t.name]["data_offsets"][1].get<int64_t>(), offset) << t.name;
  }
  EXPECT_EQ(bytes.size(), 8 + n + static_cast<uint64_t>(offset));
  EXPECT_TRUE(j["scale"]["shape"].is_array() && j["scale"]["shape"].empty()) << "scalars have shape []";
}

TEST_F(IoTest, SafetensorsWithoutMetadataHasNoMetadataKey) {
  const std::string p = path("n.safetensors");
  const std::vector<float> v = {1, 2, 3};
  io::write_safetensors(p, {{"v", {3}, v.data()}});
  const std::string bytes = read_bytes(p);
  EXPECT_EQ(bytes.find("__metadata__"), std::string::npos);
  EXPECT_TRUE(io::read_safetensors(p).metadata.empty());
  io::write_safetensors(p, {});
  EXPECT_TRUE(io::read_safetensors(p).tensors.empty());
}

TEST_F(IoTest, SafetensorsHandCraftedF16AndBf16) {
  // Byte by byte: an F16 (2, 2), a BF16 (3,), an F32 scalar, stored in a different order than the header
  // lists them, with an unpadded (odd-length) header so the F32 data is unaligned.
  const std::vector<uint16_t> f16 = {0x3c00, 0xbc00, 0x7c00, 0x0001};  // 1, -1, inf, 2^-24
  const std::vector<uint16_t> bf16 = {0x4049, 0xff80, 0x3f80};         // 3.140625, -inf, 1
  const std::vector<float> f32 = {42.5f};
  const std::string data = raw_bytes(bf16) + raw_bytes(f32) + raw_bytes(f16);  // offsets 0, 6, 10
  const std::string header =
      R"({"half":{"dtype":"F16","shape":[2,2],"data_offsets":[10,18]},)"
      R"("brain":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},)"
      R"("s":{"dtype":"F32","shape":[],"data_offsets":[6,10]},"__metadata__":{"k":"v"}})";
  const std::string p = path("h.safetensors");
  write_bytes(p, st_file(header, data));
  const io::SafetensorsFile f = io::read_safetensors(p);
  EXPECT_EQ(f.stored_dtypes.at("half"), io::DType::f16);
  EXPECT_EQ(f.stored_dtypes.at("brain"), io::DType::bf16);
  EXPECT_EQ(f.stored_dtypes.at("s"), io::DType::f32);
  const msae::Tensor& h = f.tensors.at("half");
  EXPECT_EQ(h.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(h.data[0], 1.0f);
  EXPECT_EQ(h.data[1], -1.0f);
  EXPECT_TRUE(std::isinf(h.data[2]) && h.data[2] > 0);
  EXPECT_EQ(h.data[3], std::ldexp(1.0f, -24));
  const msae::Tensor& b = f.tensors.at("brain");
  EXPECT_EQ(b.data[0], 3.140625f);
  EXPECT_TRUE(std::isinf(b.data[1]) && b.data[1] < 0);
  EXPECT_EQ(b.data[2], 1.0f);
  EXPECT_TRUE(f.tensors.at("s").shape.empty());
  EXPECT_EQ(f.tensors.at("s").data[0], 42.5f);
  EXPECT_EQ(f.metadata.at("k"), "v");
}

// ---------------------------------------------------------------------------------------------
// .safetensors: malformed input
// ---------------------------------------------------------------------------------------------
TEST_F(IoTest, SafetensorsMissingEmptyShort) {
  expect_st_error(path("nope.safetensors"), {"no such file"});
  write_bytes(path("e.safetensors"), "");
  expect_st_error(path("e.safetensors"), {"0 bytes", "at least 8"});
  write_bytes(path("e.safetensors"), std::string("\x10\0\0", 3));
  expect_st_error(path("e.safetensors"), {"3 bytes", "at least 8"});
}

TEST_F(IoTest, SafetensorsHeaderLengthBeyondEofAndAbsurd) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::string f = st_file(header, std::string(4, '\0'));
  f.replace(0, 8, le_bytes(header.size() + 100, 8));
  write_bytes(path("l.safetensors"), f);
  expect_st_error(path("l.safetensors"), {"header length", "runs past the end"});
  for (uint64_t absurd : {uint64_t{1} << 40, ~uint64_t{0}, uint64_t{1} << 63}) {
    f.replace(0, 8, le_bytes(absurd, 8));
    write_bytes(path("l.safetensors"), f);
    expect_st_error(path("l.safetensors"), {"header length " + std::to_string(absurd), "limit"});
  }
}

TEST_F(IoTest, SafetensorsBadHeaders) {
  const std::string d4(4, '\0');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", "not valid JSON"},
      {R"({"a": nonsense})", "not valid JSON"},
      {"", "not valid JSON"},
      {std::string("{\"a\xff\":1}"), "not valid JSON"},  // invalid UTF-8
      {R"([1, 2, 3])", "must be a JSON object"},
      {R"({"a": [1, 2]})", "tensor 'a': expected an object"},
      {R"({"a":{"shape":[1],"data_offsets":[0,4]}})", "tensor 'a': missing \"dtype\""},
      {R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", "tensor 'a': missing \"shape\""},
      {R"({"a":{"dtype":"F32","shape":[1]}})", "tensor 'a': missing \"data_offsets\""},
      {R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "\"dtype\" must be a string"},
      {R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "non-negative integers"},
      {R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "non-negative integers"},
      {R"({"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}})", "\"shape\" must be an array"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", "must be [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", "non-negative integers"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "out of bounds"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "out of bounds; the data section has 4 bytes"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "out of bounds"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}})", "non-negative integers"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "needs 8 bytes, but data_offsets [0, 4] span 4"},
      {R"({"a":{"dtype":"F16","shape":[1],"data_offsets":[0,4]}})", "needs 2 bytes"},
      {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}})", "64 bits"},
      {R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,4]}})", "tensor 'a' has unsupported dtype I64"},
      {R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,4]}})", "tensor 'a' has unsupported dtype F64"},
      {R"({"__metadata__":{"n":3},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       "\"__metadata__\" value for 'n' must be a string"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       "'a' more than once"},
      {R"({"__metadata__":["x"],"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "\"__metadata__\" must be"},
  };
  for (const auto& [header, part] : cases) {
    SCOPED_TRACE(header);
    const std::string p = path("b.safetensors");
    write_bytes(p, st_file(header, d4));
    expect_st_error(p, {part});
  }
}

TEST_F(IoTest, SafetensorsOverlappingOffsets) {
  const std::string p = path("o.safetensors");
  write_bytes(p, st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         std::string(12, '\0')));
  expect_st_error(p, {"'a' [0, 8)", "'b' [4, 12)", "overlap"});
  // Identical ranges overlap too; empty tensors take no bytes and never overlap.
  write_bytes(p, st_file(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})",
                         std::string(4, '\0')));
  expect_st_error(p, {"overlap"});
  write_bytes(p, st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[2,2]}})",
                         std::string(4, '\0')));
  EXPECT_NO_THROW(io::read_safetensors(p));
}

// ---------------------------------------------------------------------------------------------
// corruption sweep: damaged files either read or throw msae::Error (ASan/UBSan builds check the rest)
// ---------------------------------------------------------------------------------------------
// Damages `good` in one of three ways: truncate, overwrite a few bytes, or insert a byte.
std::string corrupt(const std::string& good, msae::Rng& rng) {
  std::string bad = good;
  switch (rng.below(3)) {
    case 0:
      bad.resize(rng.below(good.size()));
      break;
    case 1:
      for (uint64_t k = 0, n = 1 + rng.below(4); k < n; ++k) bad[rng.below(bad.size())] = static_cast<char>(rng.below(256));
      break;
    default:
      bad.insert(bad.begin() + static_cast<std::ptrdiff_t>(rng.below(bad.size())), static_cast<char>(rng.below(256)));
  }
  return bad;
}

template <class Read>
void corruption_sweep(const std::string& p, const std::string& good, Read read, int* threw) {
  msae::Rng rng(12345);
  for (int i = 0; i < 1000; ++i) {
    write_bytes(p, corrupt(good, rng));
    try {
      read();
    } catch (const msae::Error& e) {
      ASSERT_EQ(e.exit_code(), 1) << e.what();
      ASSERT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      ++*threw;
    }
  }
}

TEST_F(IoTest, CorruptedNpyNeverCrashes) {
  const std::string p = path("c.npy");
  io::write_npy(p, ramp(12).data(), {3, 4});
  const std::string good = read_bytes(p);
  int threw = 0;
  corruption_sweep(p, good, [&] {
    io::NpyRows rows(p);
    std::vector<float> out(static_cast<size_t>(rows.rows() * rows.cols()));
    rows.read_rows(0, rows.rows(), out.data());
    io::read_npy(p);
  }, &threw);
  EXPECT_GT(threw, 350) << "most corruptions of a tiny file must be detected";
}

TEST_F(IoTest, CorruptedSafetensorsNeverCrashes) {
  const std::string p = path("c.safetensors");
  const std::vector<float> v = ramp(6);
  io::write_safetensors(p, {{"a", {2, 2}, v.data()}, {"b", {2}, v.data() + 4}}, {{"k", "v"}});
  const std::string good = read_bytes(p);
  int threw = 0;
  corruption_sweep(p, good, [&] { io::read_safetensors(p); }, &threw);
  EXPECT_GT(threw, 350);
}

// ---------------------------------------------------------------------------------------------
// file-system helpers
// ---------------------------------------------------------------------------------------------
TEST_F(IoTest, TextFileRoundTripAndOverwrite) {
  const std::string p = path("cfg.json");
  std::string text = "{\"a\": 1}\n";
  text += std::string("\0binary\xff", 8);
  io::write_text_file_atomic(p, text);
  EXPECT_EQ(io::read_text_file(p), text);
  io::write_text_file_atomic(p, "short");
  EXPECT_EQ(io::read_text_file(p), "short");
  EXPECT_FALSE(io::path_exists(p + ".tmp"));
  io::write_text_file_atomic(p, "");
  EXPECT_EQ(io::read_text_file(p), "");
}

TEST_F(IoTest, TextFileErrors) {
  const std::string missing = path("missing.txt");
  expect_error([&] { io::read_text_file(missing); }, 1, missing, {"no such file"});
  expect_error([&] { io::read_text_file(dir_); }, 1, dir_, {"directory"});
  const std::string bad = path("nodir/x.txt");
  expect_error([&] { io::write_text_file_atomic(bad, "x"); }, 1, bad, {"cannot create"});
}

TEST_F(IoTest, PathQueriesAndDirectories) {
  const std::string d = path("a/b/c");
  EXPECT_FALSE(io::path_exists(d));
  EXPECT_FALSE(io::is_directory(d));
  io::create_directories(d);
  io::create_directories(d);  // idempotent
  EXPECT_TRUE(io::path_exists(d));
  EXPECT_TRUE(io::is_directory(d));
  io::write_text_file_atomic(d + "/f.txt", "x");
  EXPECT_TRUE(io::path_exists(d + "/f.txt"));
  EXPECT_FALSE(io::is_directory(d + "/f.txt"));
  const std::string file_in_the_way = d + "/f.txt/sub";
  expect_error([&] { io::create_directories(file_in_the_way); }, 1, file_in_the_way, {"cannot create directory"});
  expect_error([&] { io::create_directories(d + "/f.txt"); }, 1, d + "/f.txt", {"cannot create directory"});
  io::remove_all(path("a"));
  EXPECT_FALSE(io::path_exists(path("a")));
  io::remove_all(path("a"));  // removing what is not there is fine
}

TEST_F(IoTest, CommitDirectory) {
  const std::string out = path("out");
  auto make_tmp = [&](const std::string& content) {
    const std::string tmp = path("out.tmp-run");
    io::create_directories(tmp);
    io::write_text_file_atomic(tmp + "/cfg.json", content);
    return tmp;
  };
  // Fresh target.
  std::string tmp = make_tmp("one");
  io::commit_directory(tmp, out, /*overwrite=*/false);
  EXPECT_FALSE(io::path_exists(tmp));
  EXPECT_EQ(io::read_text_file(out + "/cfg.json"), "one");

  // Existing target without overwrite: usage error (exit 2), nothing touched.
  tmp = make_tmp("two");
  expect_error([&] { io::commit_directory(tmp, out, false); }, 2, out, {"exists", "--overwrite"});
  EXPECT_EQ(io::read_text_file(out + "/cfg.json"), "one");
  EXPECT_TRUE(io::path_exists(tmp + "/cfg.json"));

  // With overwrite the old contents go away entirely (including files the new run did not write).
  io::write_text_file_atomic(out + "/stale.txt", "old");
  io::commit_directory(tmp, out + "/", /*overwrite=*/true);  // a trailing slash names the same directory
  EXPECT_EQ(io::read_text_file(out + "/cfg.json"), "two");
  EXPECT_FALSE(io::path_exists(out + "/stale.txt"));
  EXPECT_FALSE(io::path_exists(tmp));
  EXPECT_FALSE(io::path_exists(out + ".old"));
}

// CRC-32C: the check value of the Castagnoli polynomial, incremental use, and the SSE4.2 path equal to the
// table for every length and alignment near the 8-byte steps.
TEST(Durable, Crc32c) {
  EXPECT_EQ(io::crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(io::crc32c_portable("123456789", 9), 0xE3069283u);
  EXPECT_EQ(io::crc32c("", 0), 0u);
  std::vector<unsigned char> buf(4096 + 16);
  uint64_t st = 5;
  for (auto& b : buf) {
    st = st * 6364136223846793005ULL + 1442695040888963407ULL;
    b = static_cast<unsigned char>(st >> 56);
  }
  for (size_t off = 0; off < 9; ++off)
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{63}, size_t{64}, size_t{4096}}) {
      const uint32_t a = io::crc32c(buf.data() + off, n), b = io::crc32c_portable(buf.data() + off, n);
      EXPECT_EQ(a, b) << off << " " << n;
      for (size_t cut : {size_t{0}, n / 3, n})  // incremental: the same as all at once
        EXPECT_EQ(io::crc32c(buf.data() + off + cut, n - cut, io::crc32c(buf.data() + off, cut)), a);
    }
}

// write_text_file_atomic returns the digest of what it wrote; digest_file and verify_file agree with it;
// one changed byte is named; the JSON form round-trips and bad forms are refused.
TEST_F(IoTest, FileDigests) {
  const std::string p = path("f.bin");
  const io::FileDigest w = io::write_text_file_atomic(p, std::string(100000, 'x') + "tail");
  EXPECT_EQ(w.bytes, 100004);
  const io::FileDigest r = io::digest_file(p);
  EXPECT_EQ(r.bytes, w.bytes);
  EXPECT_EQ(r.crc32c, w.crc32c);
  io::verify_file(p, w, "the test");
  const io::FileDigest back = io::FileDigest::from_json(w.to_json(), "x");
  EXPECT_EQ(back.crc32c, w.crc32c);
  EXPECT_EQ(back.bytes, w.bytes);
  io::write_text_file_atomic(p, std::string(100000, 'x') + "tain");
  expect_error([&] { io::verify_file(p, w, "REC"); }, 1, p, {"does not match the digest recorded in REC"});
  expect_error([&] { io::FileDigest::from_json(nlohmann::json{{"bytes", 3}, {"crc32c", "xyz"}}, "W"); }, 1, "W",
               {"8 hex digits"});
  expect_error([&] { io::FileDigest::from_json(nlohmann::json(5), "W"); }, 1, "W", {"must be"});
}

// Temporary names are unique and clean_leftovers knows them; PendingOutput removes an output that was
// never committed and replaces an existing one only when committed; AppendFile appends.
TEST_F(IoTest, PendingOutputTempNamesAndAppendFile) {
  const std::string out = path("out");
  EXPECT_NE(io::temp_name(out), io::temp_name(out));
  EXPECT_EQ(io::temp_name(out + "/").rfind(out + ".tmp-", 0), 0u);
  std::string abandoned;
  {
    io::PendingOutput p(out);
    abandoned = p.dir();
    io::write_text_file_atomic(p.dir() + "/a", "1");
  }
  EXPECT_FALSE(io::path_exists(abandoned));
  EXPECT_FALSE(io::path_exists(out));
  {
    io::PendingOutput p(out);
    io::write_text_file_atomic(p.dir() + "/a", "1");
    p.commit(false);
  }
  EXPECT_EQ(io::read_text_file(out + "/a"), "1");
  {
    io::PendingOutput p(out);
    io::write_text_file_atomic(p.dir() + "/a", "2");
    EXPECT_EQ(io::read_text_file(out + "/a"), "1") << "untouched until the commit";
    p.commit(true);
  }
  EXPECT_EQ(io::read_text_file(out + "/a"), "2");
  io::AppendFile f(out + "/m.jsonl", true);
  f.append("one\n");
  f.append("two\n");
  EXPECT_EQ(io::read_text_file(out + "/m.jsonl"), "one\ntwo\n") << "each append is in the file when it returns";
  f.close();
  io::AppendFile g(out + "/m.jsonl", false);
  g.append("three\n");
  g.close();
  EXPECT_EQ(io::read_text_file(out + "/m.jsonl"), "one\ntwo\nthree\n");
}

// The lock: a second holder (another open file description, as another process would have) is refused
// with the first one's line; released, the lock file is gone and the output can be locked again. A crashed
// run's temporary names are removed by clean_leftovers, an output moved aside is kept and named.
TEST_F(IoTest, OutputLockAndLeftovers) {
  const std::string out = path("sub/out");  // the parent is created for the lock file
  {
    const io::OutputLock a = io::lock_output(out, "first");
    EXPECT_TRUE(a.held());
    EXPECT_NE(io::read_text_file(out + ".lock").find("first"), std::string::npos);
    expect_error([&] { io::lock_output(out, "second"); }, 1, out, {"is in use by another msae process", "first"});
  }
  EXPECT_FALSE(io::path_exists(out + ".lock"));
  const io::OutputLock b = io::lock_output(out, "again");
  io::create_directories(out + "/checkpoints/step-0000000001.tmp-1-2");
  io::create_directories(out + ".tmp-1-0");
  io::create_directories(out + ".replaced-7");
  io::create_directories(path("sub/outer.tmp-1-0"));  // another output's: not ours to touch
  io::write_text_file_atomic(out + "/cfg.json.tmp-1-3", "{");
  io::write_text_file_atomic(out + "/cfg.json", "{}");
  const io::Leftovers l = io::clean_leftovers(out);
  EXPECT_EQ(l.removed.size(), 3u);
  EXPECT_EQ(l.kept, std::vector<std::string>{out + ".replaced-7"});
  EXPECT_FALSE(io::path_exists(out + ".tmp-1-0"));
  EXPECT_FALSE(io::path_exists(out + "/cfg.json.tmp-1-3"));
  EXPECT_FALSE(io::path_exists(out + "/checkpoints/step-0000000001.tmp-1-2"));
  EXPECT_TRUE(io::path_exists(out + "/cfg.json"));
  EXPECT_TRUE(io::path_exists(out + ".replaced-7"));
  EXPECT_TRUE(io::path_exists(path("sub/outer.tmp-1-0")));
}

}  // namespace

// io::json_*: only the stated kind and range pass; everything else is an msae::Error naming `what`
// (never a silent truncation or an undefined float -> integer conversion).
TEST(JsonRead, NumbersAreTypeAndRangeChecked) {
  using nlohmann::json;
  using msae::io::json_int;
  EXPECT_EQ(json_int(json(7), "x"), 7);
  EXPECT_EQ(json_int(json(-7), "x"), -7);
  EXPECT_EQ(json_int(json(uint64_t{9223372036854775807ULL}), "x"), INT64_MAX);
  EXPECT_EQ(msae::io::json_uint64(json(uint64_t{18446744073709551615ULL}), "x"), UINT64_MAX);
  EXPECT_FLOAT_EQ(msae::io::json_float(json(2.5), "x"), 2.5f);
  EXPECT_FLOAT_EQ(msae::io::json_float(json(3), "x"), 3.0f);
  EXPECT_EQ(msae::io::json_int_vector(json::parse("[1, 2, 3]"), "x", 0, 5), (std::vector<int64_t>{1, 2, 3}));
  const std::pair<std::function<void()>, std::string> bad[] = {
      {[] { json_int(json(1.1e88), "d_sae"); }, "d_sae must be an integer"},
      {[] { json_int(json(2.0), "k"); }, "k must be an integer"},  // a float is not an integer, even 2.0
      {[] { json_int(json("3"), "k"); }, "k must be an integer"},
      {[] { json_int(json(uint64_t{18446744073709551615ULL}), "n"); }, "n must be an integer"},
      {[] { json_int(json(-1), "bits", 0, 10); }, "bits must be an integer in [0, 10], found -1"},
      {[] { json_int(json(-3), "step", 0); }, "step must be an integer >= 0, found -3"},
      {[] { msae::io::json_uint64(json(-1), "seed"); }, "seed must be an unsigned"},
      {[] { msae::io::json_float(json(1e300), "lr"); }, "lr must be a finite number within float range"},
      {[] { msae::io::json_float(json(nullptr), "lr"); }, "lr must be a finite number"},
      {[] { msae::io::json_double(json("x"), "loss"); }, "loss must be a finite number"},
      {[] { msae::io::json_int_vector(json::parse("[1, 2.5]"), "ids"); }, "ids[1] must be an integer"},
      {[] { msae::io::json_double_vector(json(4), "m"); }, "m must be an array of numbers"},
  };
  for (const auto& [call, expected] : bad) {
    try {
      call();
      ADD_FAILURE() << "accepted; expected: " << expected;
    } catch (const msae::Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
}
