// The statistics of the feature browser (msae/browse.h, docs/browser.md): one streaming pass over a
// harvest, then the co-firing statistics and the decoder geometry.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "msae/browse.h"
#include "msae/data.h"
#include "msae/io.h"
#include "msae/kernels.h"

namespace msae::browse {

int hist_bin(float v) {
  const double b = std::floor(std::log2(static_cast<double>(v)) * kHistPerOctave) - kHistMinOctave * kHistPerOctave;
  return static_cast<int>(std::clamp<double>(b, 0, kHistBins - 1));
}

double hist_bin_lower(int bin) {
  return std::exp2(static_cast<double>(bin) / kHistPerOctave + kHistMinOctave);
}

Harvest open_harvest(const std::string& dir) {
  Harvest h;
  h.dir = io::without_trailing_slash(dir);
  if (!io::is_directory(h.dir)) usage_error("--acts ", dir, ": not a directory (a harvest directory from msae harvest)");
  const std::string manifest = h.dir + "/harvest.json";
  if (io::path_exists(manifest)) h.manifest = io::parse_json_file_text(io::read_text_file(manifest), manifest);
  const std::string index = h.dir + "/index/tokens.npy";
  if (!io::path_exists(index))
    usage_error("--acts ", dir, ": no index/tokens.npy (the token index msae harvest writes); the browser needs "
                "the token of every row");
  const io::NpyIntArray t = io::read_npy_int(index);
  if (t.shape.size() != 2 || t.shape[1] != 4)
    runtime_error(index, ": expected shape (rows, 4) (token id, file, offset, position), found ",
                  t.shape.size() == 2 ? cat("(", t.shape[0], ", ", t.shape[1], ")") : cat(t.shape.size(), " dimensions"));
  data::DataOptions o;
  o.shuffle = false;
  const auto source = data::open_data(h.dir, o);
  h.rows = source->rows();
  h.d = source->d();
  if (t.shape[0] != h.rows)
    runtime_error(index, " has ", t.shape[0], " rows but the activation shards of ", h.dir, " hold ", h.rows);
  h.token.resize(static_cast<size_t>(h.rows));
  h.context.resize(static_cast<size_t>(h.rows));
  int64_t ctx = -1;
  for (int64_t r = 0; r < h.rows; ++r) {
    const int64_t id = t.values[r * 4], pos = t.values[r * 4 + 3];
    if (id < 0 || id > INT32_MAX) runtime_error(index, ": row ", r, " has token id ", id);
    h.token[r] = static_cast<int32_t>(id);
    if (r == 0 || pos <= t.values[(r - 1) * 4 + 3]) ++ctx;
    h.context[r] = ctx;
  }
  return h;
}

namespace {

bool better(const Example& a, const Example& b) { return a.value > b.value || (a.value == b.value && a.row < b.row); }

uint64_t mix(uint64_t x) {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int octave(float v) {  // floor(log2 v), v > 0
  int e = 0;
  std::frexp(v, &e);
  return e - 1;
}

// The codes of one chunk and the rows they cover, for the windows.
struct Chunk {
  int64_t first = 0, rows = 0;
  const kernels::SparseCodes* z = nullptr;
  const Harvest* h = nullptr;
};

float value_at(const kernels::SparseCodes& z, int64_t r, int32_t id) {
  const int32_t* b = z.ids.data() + z.row_ptr[r];
  const int32_t* e = z.ids.data() + z.row_ptr[r + 1];
  const int32_t* it = std::lower_bound(b, e, id);
  return it != e && *it == id ? z.vals[it - z.ids.data()] : 0.0f;
}

Example make_example(const Chunk& c, const Options& opt, int32_t id, int64_t local, float v) {
  Example ex;
  ex.row = c.first + local;
  ex.value = v;
  const int64_t ctx = c.h->context[ex.row];
  int64_t lo = std::max<int64_t>(local - opt.before, 0), hi = std::min<int64_t>(local + opt.after + 1, c.rows);
  while (c.h->context[c.first + lo] != ctx) ++lo;
  while (c.h->context[c.first + hi - 1] != ctx) --hi;
  ex.first = c.first + lo;
  ex.window.resize(static_cast<size_t>(hi - lo));
  for (int64_t r = lo; r < hi; ++r) ex.window[r - lo] = r == local ? v : value_at(*c.z, r, id);
  return ex;
}

// One latent's activations of a chunk, in row order: (local row, value).
void update_latent(LatentStats& s, int32_t id, const std::pair<int32_t, float>* e, int64_t n, const Chunk& c,
                   const Options& opt) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t local = e[i].first;
    const float v = e[i].second;
    const int64_t row = c.first + local;
    const int o = octave(v);
    if (s.fired == 0) {
      s.top_octave = o;
    } else if (o > s.top_octave) {  // a new top octave: the bands move down
      const int64_t shift = o - s.top_octave, B = opt.bands;
      for (int64_t b = B - 1; b >= 0; --b) {
        if (b >= shift) {
          s.bands[b] = std::move(s.bands[b - shift]);
          s.band_seen[b] = s.band_seen[b - shift];
        } else {
          s.bands[b].clear();
          s.band_seen[b] = 0;
        }
      }
      s.top_octave = o;
    }
    s.fired += 1;
    s.sum += v;
    s.max = std::max(s.max, v);
    s.hist[hist_bin(v)] += 1;
    // Top examples: a heap whose front is the worst kept.
    if (static_cast<int64_t>(s.top.size()) < opt.top_examples) {
      s.top.push_back(make_example(c, opt, id, local, v));
      std::push_heap(s.top.begin(), s.top.end(), better);
    } else if (opt.top_examples > 0 && (v > s.top.front().value || (v == s.top.front().value && row < s.top.front().row))) {
      std::pop_heap(s.top.begin(), s.top.end(), better);
      s.top.back() = make_example(c, opt, id, local, v);
      std::push_heap(s.top.begin(), s.top.end(), better);
    }
    // Reservoir sample of the value's octave band (Algorithm R; the draw is a hash of seed, latent, row).
    const int64_t b = s.top_octave - o;
    if (b < opt.bands && opt.band_examples > 0) {
      const int64_t seen = ++s.band_seen[b];
      auto& band = s.bands[b];
      if (static_cast<int64_t>(band.size()) < opt.band_examples) {
        band.push_back(make_example(c, opt, id, local, v));
      } else {
        const uint64_t u = mix(opt.seed ^ mix(static_cast<uint64_t>(id) * 0x100000001b3ULL ^ mix(static_cast<uint64_t>(row)))) %
                           static_cast<uint64_t>(seen);
        if (static_cast<int64_t>(u) < opt.band_examples) band[u] = make_example(c, opt, id, local, v);
      }
    }
  }
}

// The rows' latent ids kept for the co-firing statistics: CSR.
struct IdRows {
  std::vector<int64_t> row_ptr{0};
  std::vector<int32_t> ids;
};

// Co-firing statistics, the parent and the top tokens of every latent.
void cofire_stats(SaeStats& s, const IdRows& rows, const Harvest& h, const Options& opt) {
  const int64_t D = static_cast<int64_t>(s.latents.size());
  const int64_t R = static_cast<int64_t>(rows.row_ptr.size()) - 1;
  // Column lists: the rows where each latent fires.
  std::vector<int64_t> col_ptr(D + 1, 0);
  for (int32_t id : rows.ids) col_ptr[id + 1] += 1;
  for (int64_t j = 0; j < D; ++j) col_ptr[j + 1] += col_ptr[j];
  std::vector<int64_t> fill(col_ptr.begin(), col_ptr.end() - 1);
  std::vector<int32_t> col_rows(rows.ids.size());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t e = rows.row_ptr[r]; e < rows.row_ptr[r + 1]; ++e) col_rows[fill[rows.ids[e]]++] = static_cast<int32_t>(r);
  const std::vector<int64_t>& bounds = s.bounds;
  std::vector<double> density(D);  // P(latent fires) over these rows
  for (int64_t j = 0; j < D; ++j) density[j] = R > 0 ? static_cast<double>(col_ptr[j + 1] - col_ptr[j]) / R : 0.0;
  parallel_for(D, [&](int64_t begin, int64_t end, int) {
    std::vector<uint32_t> count(D, 0);
    std::vector<int32_t> touched, toks;
    for (int64_t j = begin; j < end; ++j) {
      LatentStats& L = s.latents[j];
      const int64_t n = col_ptr[j + 1] - col_ptr[j];
      L.cofire_fired = n;
      if (n == 0) continue;
      touched.clear();
      toks.clear();
      for (int64_t c = col_ptr[j]; c < col_ptr[j + 1]; ++c) {
        const int64_t r = col_rows[c];
        toks.push_back(h.token[r]);
        for (int64_t e = rows.row_ptr[r]; e < rows.row_ptr[r + 1]; ++e) {
          const int32_t i = rows.ids[e];
          if (i != j && count[i]++ == 0) touched.push_back(i);
        }
      }
      std::sort(touched.begin(), touched.end());
      // Most frequent partners (ties: lower id).
      std::vector<int32_t> order(touched);
      const size_t keep = std::min<size_t>(order.size(), static_cast<size_t>(opt.neighbours));
      std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(),
                        [&](int32_t a, int32_t b) { return count[a] > count[b] || (count[a] == count[b] && a < b); });
      for (size_t q = 0; q < keep; ++q) L.cofire.push_back({order[q], static_cast<double>(count[order[q]]) / n});
      // Parents among the latents of earlier groups (ties: lower id; touched is ascending, so the first of
      // equal scores wins).
      const int64_t g = std::upper_bound(bounds.begin(), bounds.end(), j) - bounds.begin();
      if (g > 0) {
        uint32_t best = 0;
        double best_excess = 0;
        for (int32_t i : touched) {
          if (i >= bounds[g - 1]) break;
          if (count[i] > best) best = count[i], L.parent.id = i;
          const double excess = static_cast<double>(count[i]) / n - density[i];
          if (excess > best_excess) best_excess = excess, L.excess_parent.id = i;
        }
        if (L.parent.id >= 0) L.parent.p = static_cast<double>(best) / n;
        if (L.excess_parent.id >= 0) L.excess_parent.p = static_cast<double>(count[L.excess_parent.id]) / n;
      }
      for (int32_t i : touched) count[i] = 0;
      // The tokens it fires on most often (ties: lower id).
      std::sort(toks.begin(), toks.end());
      std::vector<std::pair<int32_t, int64_t>> runs;
      for (size_t a = 0; a < toks.size();) {
        size_t b = a;
        while (b < toks.size() && toks[b] == toks[a]) ++b;
        runs.push_back({toks[a], static_cast<int64_t>(b - a)});
        a = b;
      }
      const size_t kt = std::min<size_t>(runs.size(), 5);
      std::partial_sort(runs.begin(), runs.begin() + static_cast<std::ptrdiff_t>(kt), runs.end(),
                        [](const auto& a, const auto& b) { return a.second > b.second || (a.second == b.second && a.first < b.first); });
      runs.resize(kt);
      L.tokens = std::move(runs);
    }
  });
}

// Rows of W_dec scaled to unit norm (zero rows stay zero).
std::vector<float> unit_rows(const Tensor& W, int64_t D, int64_t d) {
  std::vector<float> u(W.ptr(), W.ptr() + D * d);
  parallel_for(D, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      double n = 0;
      for (int64_t j = 0; j < d; ++j) n += static_cast<double>(u[i * d + j]) * u[i * d + j];
      const float s = n > 0 ? static_cast<float>(1.0 / std::sqrt(n)) : 0.0f;
      for (int64_t j = 0; j < d; ++j) u[i * d + j] *= s;
    }
  });
  return u;
}

// The `keep` largest (largest = true) or smallest of s[0..m) with their indices, skipping index `skip`,
// best first; ties: lower index. One scan with a heap of the kept (its front the worst kept).
void extremes(const float* s, int64_t m, int64_t keep, int64_t skip, bool largest,
              std::vector<std::pair<int32_t, float>>& out) {
  out.clear();
  if (keep <= 0) return;
  auto first = [largest](const std::pair<int32_t, float>& a, const std::pair<int32_t, float>& b) {
    const bool beats = largest ? a.second > b.second : a.second < b.second;
    return beats || (a.second == b.second && a.first < b.first);
  };
  for (int64_t j = 0; j < m; ++j) {
    if (j == skip) continue;
    const std::pair<int32_t, float> c{static_cast<int32_t>(j), s[j]};
    if (static_cast<int64_t>(out.size()) < keep) {
      out.push_back(c);
      std::push_heap(out.begin(), out.end(), first);
    } else if (first(c, out.front())) {
      std::pop_heap(out.begin(), out.end(), first);
      out.back() = c;
      std::push_heap(out.begin(), out.end(), first);
    }
  }
  std::sort(out.begin(), out.end(), first);
}

// For every row i of A (n, d): the `keep` largest (and, with want_smallest, smallest) products A_i . B_j
// over the rows j of B (m, d), skipping j = i when skip_self. Blocked through kernels::sgemm.
template <class Out>
void extreme_products(const float* A, int64_t n, const float* B, int64_t m, int64_t d, int64_t keep, bool skip_self,
                      Out&& out /*(i, largest, smallest)*/, bool want_smallest) {
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(256, (64 << 20) / std::max<int64_t>(1, m * 4)));
  std::vector<float> S(static_cast<size_t>(block * m));
  for (int64_t i0 = 0; i0 < n; i0 += block) {
    const int64_t nb = std::min(block, n - i0);
    kernels::sgemm(kernels::Trans::no, kernels::Trans::yes, nb, m, d, 1.0f, A + i0 * d, d, B, d, 0.0f, S.data(), m);
    parallel_for(nb, [&](int64_t b, int64_t e, int) {
      std::vector<std::pair<int32_t, float>> hi, lo;
      for (int64_t r = b; r < e; ++r) {
        const int64_t i = i0 + r;
        extremes(S.data() + r * m, m, keep, skip_self ? i : -1, true, hi);
        if (want_smallest) extremes(S.data() + r * m, m, keep, -1, false, lo);
        out(i, hi, lo);
      }
    });
  }
}

}  // namespace

Collected collect(const Harvest& h, const std::vector<const saedir::SaeDirectory*>& saes,
                  const std::vector<std::string>& paths, const Options& opt, const float* unembed, int64_t V,
                  const Progress& progress) {
  MSAE_ASSERT(saes.size() == paths.size() && !saes.empty());
  Collected c;
  const int64_t rows = opt.max_rows > 0 ? std::min(opt.max_rows, h.rows) : h.rows;
  const int64_t cap = opt.cofire_rows > 0 ? std::min(opt.cofire_rows, rows) : rows;
  if (cap > INT32_MAX) usage_error("--cofire-rows must be below 2^31 rows");
  c.rows = rows;
  c.cofire_rows = cap;
  const size_t S = saes.size();
  std::vector<float> scale(S);
  std::vector<IdRows> idrows(S);
  for (size_t s = 0; s < S; ++s) {
    const saedir::SaeDirectory& sd = *saes[s];
    if (sd.sae.d_in != h.d)
      usage_error("--sae ", paths[s], " takes d_in = ", sd.sae.d_in, " but the activations of ", h.dir, " have d = ", h.d);
    SaeStats st;
    st.path = paths[s];
    st.sae = &sd;
    st.bounds = sd.sae.boundaries();
    st.latents.resize(static_cast<size_t>(sd.sae.d_sae));
    for (LatentStats& L : st.latents) {
      L.hist.assign(kHistBins, 0);
      L.bands.resize(static_cast<size_t>(opt.bands));
      L.band_seen.assign(static_cast<size_t>(opt.bands), 0);
    }
    c.saes.push_back(std::move(st));
    scale[s] = lm::sae_input_scale(sd);
  }

  // The pass: chunks of whole contexts, so every window lies in its chunk.
  Timer timer;
  data::DataOptions dopt;
  dopt.shuffle = false;
  const auto source = data::open_data(h.dir, dopt);
  std::vector<float> x, xs;
  std::vector<int64_t> fill;
  std::vector<std::pair<int32_t, float>> entries;
  std::vector<int64_t> col_ptr;
  for (int64_t done = 0; done < rows;) {
    int64_t end = std::min(rows, done + std::max<int64_t>(opt.chunk, 1));
    if (end < rows) {
      int64_t e = end;
      while (e > done && h.context[e] == h.context[e - 1]) --e;
      if (e == done) {  // a context longer than the chunk: take it whole
        e = end;
        while (e < rows && h.context[e] == h.context[e - 1]) ++e;
      }
      end = e;
    }
    const int64_t n = end - done;
    x.resize(static_cast<size_t>(n * h.d));
    source->next_batch(n, x.data());
    for (size_t s = 0; s < S; ++s) {
      SaeStats& st = c.saes[s];
      const saedir::SaeDirectory& sd = *st.sae;
      const float* in = x.data();
      if (scale[s] != 1.0f) {
        xs.resize(x.size());
        for (size_t i = 0; i < x.size(); ++i) xs[i] = x[i] * scale[s];
        in = xs.data();
      }
      const int64_t D = sd.sae.d_sae;
      const kernels::SparseCodes z = encode_inference(sd.sae, sd.params, in, n, D);
      // The chunk by latent (counting sort; each latent's entries in row order).
      col_ptr.assign(static_cast<size_t>(D + 1), 0);
      for (int32_t id : z.ids) col_ptr[id + 1] += 1;
      for (int64_t j = 0; j < D; ++j) col_ptr[j + 1] += col_ptr[j];
      fill.assign(col_ptr.begin(), col_ptr.end() - 1);
      entries.resize(z.ids.size());
      for (int64_t r = 0; r < n; ++r)
        for (int64_t e = z.row_ptr[r]; e < z.row_ptr[r + 1]; ++e)
          entries[fill[z.ids[e]]++] = {static_cast<int32_t>(r), z.vals[e]};
      const Chunk ch{done, n, &z, &h};
      parallel_for(D, [&](int64_t b, int64_t e, int) {
        for (int64_t j = b; j < e; ++j)
          if (col_ptr[j + 1] > col_ptr[j])
            update_latent(st.latents[j], static_cast<int32_t>(j), entries.data() + col_ptr[j], col_ptr[j + 1] - col_ptr[j], ch, opt);
      }, 64);
      if (done < cap) {
        IdRows& ir = idrows[s];
        const int64_t upto = std::min(n, cap - done);
        for (int64_t r = 0; r < upto; ++r) {
          ir.ids.insert(ir.ids.end(), z.ids.begin() + z.row_ptr[r], z.ids.begin() + z.row_ptr[r + 1]);
          ir.row_ptr.push_back(static_cast<int64_t>(ir.ids.size()));
        }
      }
    }
    done = end;
    if (progress) progress(done, rows);
  }
  c.encode_seconds = timer.seconds();

  // Finish the per-latent records; the group shares of L0.
  for (SaeStats& st : c.saes) {
    st.group_active.assign(st.bounds.size(), 0.0);
    double active = 0;
    for (int64_t j = 0; j < static_cast<int64_t>(st.latents.size()); ++j) {
      LatentStats& L = st.latents[j];
      std::sort(L.top.begin(), L.top.end(), better);
      for (auto& band : L.bands) std::sort(band.begin(), band.end(), better);
      const int64_t g = std::upper_bound(st.bounds.begin(), st.bounds.end(), j) - st.bounds.begin();
      st.group_active[g] += static_cast<double>(L.fired);
      active += static_cast<double>(L.fired);
    }
    st.l0 = rows > 0 ? active / static_cast<double>(rows) : 0.0;
  }

  Timer ct;
  for (size_t s = 0; s < S; ++s) {
    cofire_stats(c.saes[s], idrows[s], h, opt);
    idrows[s] = IdRows{};
  }
  c.cofire_seconds = ct.seconds();

  // Decoder geometry.
  Timer gt;
  std::vector<std::vector<float>> unit(S);
  for (size_t s = 0; s < S; ++s) unit[s] = unit_rows(saes[s]->params.W_dec, saes[s]->sae.d_sae, h.d);
  for (size_t s = 0; s < S; ++s) {
    SaeStats& st = c.saes[s];
    const int64_t D = saes[s]->sae.d_sae;
    for (LatentStats& L : st.latents) L.nearest_other.resize(S);
    extreme_products(unit[s].data(), D, unit[s].data(), D, h.d, opt.neighbours, true,
                     [&](int64_t i, const auto& hi, const auto&) {
                       for (const auto& [j, v] : hi) st.latents[i].nearest.push_back({j, v});
                     }, false);
    for (size_t t = 0; t < S; ++t) {
      if (t == s) continue;
      extreme_products(unit[s].data(), D, unit[t].data(), saes[t]->sae.d_sae, h.d, 3, false,
                       [&](int64_t i, const auto& hi, const auto&) {
                         for (const auto& [j, v] : hi) st.latents[i].nearest_other[t].push_back({j, v});
                       }, false);
    }
    auto cosine = [&](int64_t a, int64_t b) {
      double dot = 0;
      for (int64_t q = 0; q < h.d; ++q) dot += static_cast<double>(unit[s][a * h.d + q]) * unit[s][b * h.d + q];
      return dot;
    };
    for (int64_t j = 0; j < D; ++j) {
      LatentStats& L = st.latents[j];
      for (LatentStats::Parent* P : {&L.parent, &L.excess_parent})
        if (P->id >= 0) P->cos = cosine(j, P->id);
    }
    if (unembed && opt.logit_tokens > 0) {
      // Logit effect of each decoder row through the unembedding, in the activations' units.
      std::vector<float> W(saes[s]->params.W_dec.ptr(), saes[s]->params.W_dec.ptr() + D * h.d);
      for (float& w : W) w /= scale[s];
      extreme_products(W.data(), D, unembed, V, h.d, opt.logit_tokens, false,
                       [&](int64_t i, const auto& hi, const auto& lo) {
                         st.latents[i].promoted = hi;
                         st.latents[i].suppressed = lo;
                       }, true);
    }
  }
  c.geometry_seconds = gt.seconds();
  c.peak_rss = peak_rss_bytes();
  return c;
}

}  // namespace msae::browse
