// GPT-2 byte-level BPE (openai/gpt-2 encoder.py), with the pre-tokenizer regex written out by hand
// (no regex library in Debian's C++ toolchain supports \p{L}).
#include <algorithm>
#include <climits>
#include <nlohmann/json.hpp>

#include "msae/io.h"
#include "msae/lm.h"

namespace msae::lm {
namespace {

struct CodeRange {
  uint32_t lo, hi;
};
#include "lm/unicode_tables.inc"

template <size_t N>
bool in_ranges(const CodeRange (&r)[N], uint32_t cp) {
  size_t lo = 0, hi = N;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (cp < r[mid].lo) hi = mid;
    else if (cp > r[mid].hi) lo = mid + 1;
    else return true;
  }
  return false;
}

// Unicode White_Space (what \s matches in the `regex` module GPT-2's encoder.py uses).
bool is_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

constexpr uint32_t kInvalid = 0xFFFFFFFFu;  // a byte that is not valid UTF-8: category "other"

enum class Cat : uint8_t { letter, number, space, other };

Cat category(uint32_t cp) {
  if (cp == kInvalid) return Cat::other;
  if (is_space(cp)) return Cat::space;
  if (in_ranges(kLetterRanges, cp)) return Cat::letter;
  if (in_ranges(kNumberRanges, cp)) return Cat::number;
  return Cat::other;
}

struct Char {
  uint32_t cp;
  int64_t begin, end;  // byte span in the text
  Cat cat;
};

// Strict UTF-8 decoding (no overlongs, no surrogates, <= U+10FFFF); anything else is one invalid byte.
std::vector<Char> decode_utf8(std::string_view s) {
  std::vector<Char> out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const int64_t n = static_cast<int64_t>(s.size());
  int64_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    int len = 0;
    uint32_t cp = 0, min = 0;
    if (c < 0x80) { len = 1; cp = c; }
    else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) ok = false;
      else cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (ok && len > 1 && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
    if (!ok) { len = 1; cp = kInvalid; }
    out.push_back({cp, i, i + len, category(cp)});
    i += len;
  }
  return out;
}

// GPT-2's pre-tokenizer: returns the [begin, end) character spans of the pieces, in order.
std::vector<std::pair<size_t, size_t>> pretokenize(const std::vector<Char>& c) {
  std::vector<std::pair<size_t, size_t>> out;
  const size_t n = c.size();
  size_t i = 0;
  auto run = [&](size_t j, Cat cat) {
    while (j < n && c[j].cat == cat) ++j;
    return j;
  };
  while (i < n) {
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, as in encoder.py)
    if (c[i].cp == '\'' && i + 1 < n) {
      const uint32_t a = c[i + 1].cp, b = i + 2 < n ? c[i + 2].cp : 0;
      size_t len = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') len = 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) len = 3;
      if (len) {
        out.emplace_back(i, i + len);
        i += len;
        continue;
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
    const bool sp = c[i].cp == ' ' && i + 1 < n && c[i + 1].cat != Cat::space;
    const size_t s = sp ? i + 1 : i;
    if (c[s].cat != Cat::space) {
      const size_t j = run(s, c[s].cat);
      out.emplace_back(i, j);
      i = j;
      continue;
    }
    // '\s+(?!\S)' then '\s+': a whitespace run followed by a non-space keeps its last character for
    // the next piece (so " word" stays together), unless the run is a single character.
    const size_t j = run(i, Cat::space);
    const size_t end = (j == n || j - i == 1) ? j : j - 1;
    out.emplace_back(i, end);
    i = end;
  }
  return out;
}

// bytes_to_unicode() of encoder.py: byte -> UTF-8 of the printable character standing for it.
const std::vector<std::string>& byte_symbols() {
  static const std::vector<std::string> table = [] {
    std::vector<int> bs;
    for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
    std::vector<uint32_t> cp(256, 0);
    std::vector<bool> has(256, false);
    for (int b : bs) { cp[b] = static_cast<uint32_t>(b); has[b] = true; }
    int extra = 0;
    for (int b = 0; b < 256; ++b)
      if (!has[b]) cp[b] = 256 + static_cast<uint32_t>(extra++);
    std::vector<std::string> t(256);
    for (int b = 0; b < 256; ++b) {
      const uint32_t u = cp[b];
      std::string s;
      if (u < 0x80) s.push_back(static_cast<char>(u));
      else {
        s.push_back(static_cast<char>(0xC0 | (u >> 6)));
        s.push_back(static_cast<char>(0x80 | (u & 0x3F)));
      }
      t[b] = s;
    }
    return t;
  }();
  return table;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& dir) {
  // openai/gpt-2 names the files encoder.json / vocab.bpe; the HF gpt2 repository vocab.json / merges.txt
  // (same contents).
  const bool openai = io::path_exists(dir + "/encoder.json");
  const bool hf = io::path_exists(dir + "/vocab.json") && io::path_exists(dir + "/merges.txt");
  if (!openai && !hf)
    usage_error("tokenizer directory ", dir, ": expected encoder.json + vocab.bpe (or HF's vocab.json + merges.txt)");
  return openai ? load(dir + "/encoder.json", dir + "/vocab.bpe") : load(dir + "/vocab.json", dir + "/merges.txt");
}

Tokenizer Tokenizer::load(const std::string& encoder_json, const std::string& vocab_bpe) {
  Tokenizer t;
  const std::string enc_text = io::read_text_file(encoder_json);
  nlohmann::json enc;
  try {
    enc = nlohmann::json::parse(enc_text);
  } catch (const std::exception& e) {
    runtime_error(encoder_json, ": not valid JSON (", e.what(), "); expected GPT-2's encoder.json (token -> id)");
  }
  if (!enc.is_object() || enc.empty())
    runtime_error(encoder_json, ": expected a JSON object mapping token strings to ids");
  // Reverse of byte_symbols(): symbol (UTF-8) -> byte.
  std::unordered_map<std::string, unsigned char> sym_to_byte;
  for (int b = 0; b < 256; ++b) sym_to_byte[byte_symbols()[b]] = static_cast<unsigned char>(b);
  int64_t max_id = -1;
  for (auto it = enc.begin(); it != enc.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > INT32_MAX)
      runtime_error(encoder_json, ": the id of token ", nlohmann::json(it.key()).dump(), " is not a non-negative integer");
    max_id = std::max<int64_t>(max_id, it.value().get<int64_t>());
  }
  if (max_id + 1 != static_cast<int64_t>(enc.size()))
    runtime_error(encoder_json, ": ids are not 0..", enc.size() - 1, " (largest id ", max_id, ")");
  t.bytes_.assign(enc.size(), std::string());
  std::vector<bool> seen(enc.size(), false);
  for (auto it = enc.begin(); it != enc.end(); ++it) {
    const std::string& key = it.key();
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    if (seen[id]) runtime_error(encoder_json, ": id ", id, " is used twice");
    seen[id] = true;
    t.ids_[key] = id;
    if (key == "<|endoftext|>") {
      t.eot_ = id;
      t.bytes_[id] = key;
      continue;
    }
    // Split the key into symbols (each one or two UTF-8 bytes) and map them back to raw bytes.
    std::string raw;
    size_t i = 0;
    while (i < key.size()) {
      const size_t len = (static_cast<unsigned char>(key[i]) < 0x80) ? 1 : 2;
      auto f = sym_to_byte.find(key.substr(i, len));
      if (f == sym_to_byte.end())
        runtime_error(encoder_json, ": token ", nlohmann::json(key).dump(),
                      " holds a character outside GPT-2's byte alphabet; is this a GPT-2 encoder.json?");
      raw.push_back(static_cast<char>(f->second));
      i += len;
    }
    t.bytes_[id] = raw;
  }
  const std::string bpe_text = io::read_text_file(vocab_bpe);
  size_t pos = 0;
  int32_t rank = 0;
  bool first = true;
  int64_t line_no = 0;
  while (pos < bpe_text.size()) {
    size_t eol = bpe_text.find('\n', pos);
    if (eol == std::string::npos) eol = bpe_text.size();
    std::string line = bpe_text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (first) {  // "#version: 0.2"
      first = false;
      if (line.rfind("#version", 0) == 0) continue;
    }
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 >= line.size() || line.find(' ', sp + 1) != std::string::npos)
      runtime_error(vocab_bpe, ":", line_no, ": expected a merge \"A B\", found ", nlohmann::json(line).dump());
    t.merge_rank_.emplace(line, rank++);
  }
  if (rank == 0) runtime_error(vocab_bpe, ": no merges found; expected GPT-2's vocab.bpe");
  return t;
}

void Tokenizer::bpe(const std::string& piece, std::vector<int32_t>& out, std::vector<int64_t>* offsets,
                    int64_t base) const {
  const auto& sym = byte_symbols();
  std::vector<std::string> word;
  std::vector<int64_t> nbytes;  // raw bytes per symbol
  word.reserve(piece.size());
  for (unsigned char b : piece) {
    word.push_back(sym[b]);
    nbytes.push_back(1);
  }
  // Repeatedly merge the adjacent pair of lowest rank (all its occurrences, left to right), as encoder.py.
  std::string key;
  while (word.size() > 1) {
    int32_t best = INT32_MAX;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      key.assign(word[i]).append(" ").append(word[i + 1]);
      auto f = merge_rank_.find(key);
      if (f != merge_rank_.end() && f->second < best) {
        best = f->second;
        best_i = i;
      }
    }
    if (best == INT32_MAX) break;
    const std::string a = word[best_i], b = word[best_i + 1];
    std::vector<std::string> nw;
    std::vector<int64_t> nb;
    nw.reserve(word.size());
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == a && word[i + 1] == b) {
        nw.push_back(a + b);
        nb.push_back(nbytes[i] + nbytes[i + 1]);
        i += 2;
      } else {
        nw.push_back(word[i]);
        nb.push_back(nbytes[i]);
        ++i;
      }
    }
    word.swap(nw);
    nbytes.swap(nb);
  }
  int64_t off = base;
  for (size_t i = 0; i < word.size(); ++i) {
    auto f = ids_.find(word[i]);
    MSAE_ASSERT(f != ids_.end(), "BPE produced a symbol missing from encoder.json");
    out.push_back(f->second);
    if (offsets) offsets->push_back(off);
    off += nbytes[i];
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, std::vector<int64_t>* byte_offsets) const {
  std::vector<int32_t> out;
  if (byte_offsets) byte_offsets->clear();
  const std::vector<Char> chars = decode_utf8(text);
  // Pieces repeat a lot in running text: cache the ids (and offsets within the piece) of each piece,
  // local to this call.
  struct Entry {
    std::vector<int32_t> ids;
    std::vector<int64_t> offs;  // relative to the piece's first byte
  };
  std::unordered_map<std::string, Entry> cache;
  for (const auto& [a, b] : pretokenize(chars)) {
    const int64_t begin = chars[a].begin, end = chars[b - 1].end;
    std::string piece(text.substr(static_cast<size_t>(begin), static_cast<size_t>(end - begin)));
    auto f = cache.find(piece);
    if (f == cache.end()) {
      Entry e;
      bpe(piece, e.ids, &e.offs, 0);
      f = cache.emplace(std::move(piece), std::move(e)).first;
    }
    out.insert(out.end(), f->second.ids.begin(), f->second.ids.end());
    if (byte_offsets)
      for (int64_t o : f->second.offs) byte_offsets->push_back(begin + o);
  }
  return out;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) usage_error("token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")");
  return bytes_[static_cast<size_t>(id)];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) s += token_bytes(id);
  return s;
}

}  // namespace msae::lm
