// The static site of the feature browser (docs/browser.md): HTML and JS from src/browse/assets (compiled
// in), the statistics as JavaScript files under data/ (loaded by <script> tags, which browsers allow from
// file:// where fetch() of JSON is refused).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "assets.h"
#include "msae/browse.h"
#include "msae/io.h"

namespace msae::browse {

std::string token_text(const lm::Tokenizer& tok, int32_t id) {
  if (id < 0 || id >= tok.vocab_size()) return cat("<", id, ">");
  const std::string& b = tok.token_bytes(id);
  std::string out;
  for (size_t i = 0; i < b.size();) {
    const auto c = static_cast<unsigned char>(b[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    bool ok = n > 0 && i + n <= b.size();
    for (size_t q = 1; ok && q < n; ++q) ok = (static_cast<unsigned char>(b[i + q]) & 0xc0) == 0x80;
    if (ok) {
      out.append(b, i, n);
      i += n;
    } else {
      out += "\xef\xbf\xbd";  // U+FFFD
      i += 1;
    }
  }
  return out;
}

namespace {

constexpr int64_t kChunkLatents = 64;  // latents per data file

// v rounded to 4 significant digits (nlohmann prints the shortest text that reads back).
double r4(double v) {
  if (v == 0 || !std::isfinite(v)) return 0;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return std::strtod(buf, nullptr);
}

struct Writer {
  std::string dir;
  int64_t files = 0;
  void put(const std::string& rel, const std::string& text) {
    const std::string path = dir + "/" + rel;
    const size_t slash = path.rfind('/');
    io::create_directories(path.substr(0, slash));
    io::write_text_file_atomic(path, text);
    ++files;
  }
};

std::string js(const std::string& lhs, const nlohmann::json& value) {
  return lhs + " = " + value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + ";\n";
}

nlohmann::json example_json(const Example& e, const Harvest& h, std::set<int32_t>& used) {
  nlohmann::json vals = nlohmann::json::array(), toks = nlohmann::json::array();
  for (size_t q = 0; q < e.window.size(); ++q) {
    vals.push_back(r4(e.window[q]));
    const int32_t t = h.token[e.first + static_cast<int64_t>(q)];
    toks.push_back(t);
    used.insert(t);
  }
  return nlohmann::json::array({e.row, r4(e.value), e.row - e.first, toks, vals});
}

nlohmann::json pairs_json(const std::vector<Neighbour>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (const Neighbour& n : v) a.push_back(nlohmann::json::array({n.id, r4(n.value)}));
  return a;
}

nlohmann::json token_pairs_json(const std::vector<std::pair<int32_t, float>>& v, std::set<int32_t>& used) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& [t, x] : v) {
    a.push_back(nlohmann::json::array({t, r4(x)}));
    used.insert(t);
  }
  return a;
}

nlohmann::json latent_json(const LatentStats& L, const Harvest& h, std::set<int32_t>& used) {
  nlohmann::json j = nlohmann::json::object();
  if (L.fired > 0) {
    int lo = 0, hi = kHistBins - 1;
    while (L.hist[lo] == 0) ++lo;
    while (L.hist[hi] == 0) --hi;
    j["hist"] = {{"first", lo}, {"counts", std::vector<uint32_t>(L.hist.begin() + lo, L.hist.begin() + hi + 1)}};
    nlohmann::json top = nlohmann::json::array();
    for (const Example& e : L.top) top.push_back(example_json(e, h, used));
    j["top"] = top;
    nlohmann::json bands = nlohmann::json::array();
    for (size_t b = 0; b < L.bands.size(); ++b) {
      if (L.band_seen[b] == 0) continue;
      nlohmann::json ex = nlohmann::json::array();
      for (const Example& e : L.bands[b]) ex.push_back(example_json(e, h, used));
      bands.push_back({{"octave", L.top_octave - static_cast<int64_t>(b)}, {"seen", L.band_seen[b]}, {"examples", ex}});
    }
    j["bands"] = bands;
    j["cofire"] = pairs_json(L.cofire);
    j["cofire_fired"] = L.cofire_fired;
  }
  j["nearest"] = pairs_json(L.nearest);
  nlohmann::json other = nlohmann::json::object();
  for (size_t t = 0; t < L.nearest_other.size(); ++t)
    if (!L.nearest_other[t].empty()) other[std::to_string(t)] = pairs_json(L.nearest_other[t]);
  j["other"] = other;
  if (!L.promoted.empty()) {
    j["promoted"] = token_pairs_json(L.promoted, used);
    j["suppressed"] = token_pairs_json(L.suppressed, used);
  }
  return j;
}

// The index columns of one SAE (one entry per latent in each).
nlohmann::json index_json(const SaeStats& st, const Harvest& h, std::set<int32_t>& used) {
  nlohmann::json fired = nlohmann::json::array(), mean = nlohmann::json::array(), mx = nlohmann::json::array(),
                 toks = nlohmann::json::array(), ctx = nlohmann::json::array(), parent = nlohmann::json::array(),
                 parent_p = nlohmann::json::array(), parent_cos = nlohmann::json::array(),
                 xparent = nlohmann::json::array(), xparent_p = nlohmann::json::array(), xparent_cos = nlohmann::json::array(),
                 cofire_fired = nlohmann::json::array(), other = nlohmann::json::array();
  for (const LatentStats& L : st.latents) {
    fired.push_back(L.fired);
    mean.push_back(L.fired ? r4(L.sum / static_cast<double>(L.fired)) : 0.0);
    mx.push_back(r4(L.max));
    nlohmann::json tk = nlohmann::json::array();
    for (const auto& [t, n] : L.tokens) {
      tk.push_back(nlohmann::json::array({t, n}));
      used.insert(t);
    }
    toks.push_back(tk);
    // The top example's text around its maximum: up to 6 tokens before it and 1 after.
    nlohmann::json c = nlohmann::json::array();
    if (!L.top.empty()) {
      const Example& e = L.top.front();
      const int64_t at = e.row - e.first, n = static_cast<int64_t>(e.window.size());
      const int64_t lo = std::max<int64_t>(0, at - 6), hi = std::min<int64_t>(n, at + 2);
      nlohmann::json ids = nlohmann::json::array();
      for (int64_t q = lo; q < hi; ++q) {
        ids.push_back(h.token[e.first + q]);
        used.insert(h.token[e.first + q]);
      }
      c = nlohmann::json::array({ids, at - lo});
    }
    ctx.push_back(c);
    parent.push_back(L.parent.id);
    parent_p.push_back(r4(L.parent.p));
    parent_cos.push_back(r4(L.parent.cos));
    xparent.push_back(L.excess_parent.id);
    xparent_p.push_back(r4(L.excess_parent.p));
    xparent_cos.push_back(r4(L.excess_parent.cos));
    cofire_fired.push_back(L.cofire_fired);
    nlohmann::json o = nlohmann::json::object();
    for (size_t t = 0; t < L.nearest_other.size(); ++t)
      if (!L.nearest_other[t].empty())
        o[std::to_string(t)] = nlohmann::json::array({L.nearest_other[t][0].id, r4(L.nearest_other[t][0].value)});
    other.push_back(o);
  }
  return {{"fired", fired}, {"mean", mean}, {"max", mx}, {"tokens", toks}, {"context", ctx}, {"parent", parent},
          {"parent_p", parent_p}, {"parent_cos", parent_cos}, {"xparent", xparent}, {"xparent_p", xparent_p},
          {"xparent_cos", xparent_cos}, {"cofire_fired", cofire_fired}, {"other", other}};
}

nlohmann::json sae_json(const SaeStats& st, int64_t rows) {
  const SaeConfig& cfg = st.sae->sae;
  int64_t dead = 0;
  for (const LatentStats& L : st.latents) dead += L.fired == 0;
  double all = 0;
  for (double a : st.group_active) all += a;
  std::vector<double> share;
  for (double a : st.group_active) share.push_back(all > 0 ? r4(a / all) : 0.0);
  nlohmann::json j = {{"name", st.name}, {"path", st.path}, {"format", st.sae->format},
                      {"arch", arch_name(cfg.arch)}, {"d_in", cfg.d_in}, {"d_sae", cfg.d_sae}, {"k", cfg.k},
                      {"group_sizes", cfg.group_sizes}, {"bounds", st.bounds}, {"l0", r4(st.l0)},
                      {"group_share", share}, {"dead", dead}, {"rows", rows},
                      {"hook_name", st.sae->hook_name}, {"model_name", st.sae->model_name}};
  const nlohmann::json& m = st.sae->msae_json;
  if (m.is_object() && m.contains("final_metrics") && m["final_metrics"].is_object()) {
    const nlohmann::json& f = m["final_metrics"];
    if (f.contains("whole") && f["whole"].is_object()) j["final_eval"] = f["whole"];
  }
  return j;
}

}  // namespace

int64_t write_site(const std::string& dir, const Collected& c, const Harvest& h, const lm::Tokenizer& tok,
                   const Options& opt, const nlohmann::json& about) {
  Writer w{dir};
  // The pages are one template (page.html) with their title and name filled in; the rest is copied.
  for (const Asset& a : assets()) {
    const std::string text(reinterpret_cast<const char*>(a.data), a.size);
    if (std::string(a.name) != "page.html") {
      w.put(a.name, text);
      continue;
    }
    for (const auto& [page, title] : {std::pair<std::string, std::string>{"index", "msae browser"},
                                      {"latent", "latent · msae browser"},
                                      {"tree", "Matryoshka tree · msae browser"}}) {
      std::string html = text;
      for (const auto& [key, value] : {std::pair<std::string, std::string>{"{{TITLE}}", title}, {"{{PAGE}}", page}})
        for (size_t at = html.find(key); at != std::string::npos; at = html.find(key, at + value.size()))
          html.replace(at, key.size(), value);
      w.put(page + ".html", html);
    }
  }
  std::set<int32_t> used;
  nlohmann::json saes = nlohmann::json::array();
  for (size_t s = 0; s < c.saes.size(); ++s) {
    const SaeStats& st = c.saes[s];
    saes.push_back(sae_json(st, c.rows));
    w.put(cat("data/s", s, "/index.js"), js(cat("MSAE.index[", s, "]"), index_json(st, h, used)));
    const int64_t D = static_cast<int64_t>(st.latents.size());
    for (int64_t c0 = 0; c0 < D; c0 += kChunkLatents) {
      nlohmann::json list = nlohmann::json::array();
      for (int64_t j = c0; j < std::min(D, c0 + kChunkLatents); ++j) list.push_back(latent_json(st.latents[j], h, used));
      char name[64];
      std::snprintf(name, sizeof name, "data/s%zu/c%05lld.js", s, static_cast<long long>(c0 / kChunkLatents));
      w.put(name, "MSAE.chunk(" + std::to_string(s) + ", " + std::to_string(c0 / kChunkLatents) + ", " +
                      list.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + ");\n");
    }
  }
  nlohmann::json vocab = nlohmann::json::object();
  for (int32_t t : used) vocab[std::to_string(t)] = token_text(tok, t);
  w.put("data/vocab.js", js("MSAE.vocab", vocab));
  nlohmann::json site = {{"about", about},
                         {"rows", c.rows},
                         {"cofire_rows", c.cofire_rows},
                         {"chunk_latents", kChunkLatents},
                         {"hist", {{"per_octave", kHistPerOctave}, {"min_octave", kHistMinOctave}}},
                         {"options", {{"top_examples", opt.top_examples}, {"bands", opt.bands},
                                      {"band_examples", opt.band_examples}, {"before", opt.before},
                                      {"after", opt.after}, {"neighbours", opt.neighbours},
                                      {"logit_tokens", opt.logit_tokens}, {"seed", opt.seed}}},
                         {"saes", saes}};
  w.put("data/site.js", js("MSAE.site", site));
  return w.files;
}

}  // namespace msae::browse
