// Routing headroom (the C3PO paper's motivating analysis; ANALYSIS ONLY, the search uses the label): how far the
// routing at a prompt's last position alone can move the answer. The prompt is cached once; every candidate routing
// replays only the last position above the layer it changes, from that layer's cached parts (adapt/last_position.h),
// candidates stacked through each MoE block.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "adapt/last_position.h"
#include "cpu/convert.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/router.h"
#include "routescope/adapt.h"

namespace routescope {

namespace {

// The label's margin over the best competing token, from final hidden rows (before the final norm).
class Scorer {
 public:
  Scorer(const Checkpoint& ck, ThreadPool& pool, int label, const std::vector<int>& options)
      : ck_(ck), pool_(pool), H_(ck.config.hidden), label_(label), options_(options) {
    rows_.resize(options_.size() * H_);
    for (size_t i = 0; i < options_.size(); ++i) convert_to_f32(ck.lm_head.row(options_[i]), ck.lm_head.dtype, &rows_[i * H_], H_);
  }

  struct Score {
    double margin = 0;
    int answer = -1, rival = -1;  // the argmax, and the best token other than the label
  };

  std::vector<Score> score(const float* h, int R) {
    std::vector<float> x(static_cast<size_t>(R) * H_);
    for (int j = 0; j < R; ++j) rmsnorm_row(h + static_cast<size_t>(j) * H_, ck_.final_norm.data(), H_, ck_.config.eps, &x[static_cast<size_t>(j) * H_]);
    std::vector<Score> out(R);
    if (options_.empty()) {
      const int V = ck_.config.vocab;
      std::vector<float> z(static_cast<size_t>(R) * V);
      matmul(pool_, x.data(), R, ck_.lm_head, z.data());
      for (int j = 0; j < R; ++j) {
        const float* zj = &z[static_cast<size_t>(j) * V];
        int best = 0, rival = label_ == 0 ? 1 : 0;
        for (int v = 1; v < V; ++v) {
          if (zj[v] > zj[best]) best = v;
          if (v != label_ && zj[v] > zj[rival]) rival = v;
        }
        out[j] = {static_cast<double>(zj[label_]) - zj[rival], best, rival};
      }
      return out;
    }
    const int n = static_cast<int>(options_.size());
    for (int j = 0; j < R; ++j) {
      std::vector<double> z(n);
      for (int i = 0; i < n; ++i) {
        double d = 0;
        for (int c = 0; c < H_; ++c) d += static_cast<double>(x[static_cast<size_t>(j) * H_ + c]) * rows_[static_cast<size_t>(i) * H_ + c];
        z[i] = d;
      }
      int best = 0, rival = -1, li = 0;
      for (int i = 0; i < n; ++i) {
        if (z[i] > z[best]) best = i;
        if (options_[i] == label_) li = i;
        else if (rival < 0 || z[i] > z[rival]) rival = i;
      }
      out[j] = {z[li] - z[rival], options_[best], options_[rival]};
    }
    return out;
  }

  // dMargin/dh for one row h, the rival held fixed.
  void margin_grad(const float* h, int rival, float* dh) {
    std::vector<float> a(H_), b(H_), dx(H_), x(H_);
    convert_to_f32(ck_.lm_head.row(label_), ck_.lm_head.dtype, a.data(), H_);
    convert_to_f32(ck_.lm_head.row(rival), ck_.lm_head.dtype, b.data(), H_);
    for (int c = 0; c < H_; ++c) dx[c] = a[c] - b[c];
    const float r = rmsnorm_row(h, ck_.final_norm.data(), H_, ck_.config.eps, x.data());
    rmsnorm_row_backward(h, r, ck_.final_norm.data(), dx.data(), H_, dh, false);
  }

 private:
  const Checkpoint& ck_;
  ThreadPool& pool_;
  const int H_, label_;
  const std::vector<int> options_;
  std::vector<float> rows_;  // the option tokens' LM-head rows, widened
};

class Search {
 public:
  Search(SessionImpl& s, const HeadroomOptions& o, int last, bool fix)
      : s_(s), cfg_(s.m_.checkpoint().config), o_(o), last_(last), fix_(fix),
        scorer_(s.m_.checkpoint(), s.dec_.pool(), o.label, o.options),
        session_(&s, [](SessionImpl*) {}) {}

  // A prefix whose layer l is cached from h_mid (the last token's residual after l's attention).
  std::shared_ptr<C3poPrefix> parts(int l, const float* h_mid) {
    auto p = std::make_shared<C3poPrefix>();
    p->session = session_;
    p->first_layer = l;
    p->last = last_;
    p->model = &s_.m_;
    cache_block(*p, h_mid);
    return p;
  }

  // Scores rows that replace the routing of p's layer with `omegas` (the layers above route as the model does).
  // With `saves` (one row), keeps what margin_at_output needs.
  std::vector<Scorer::Score> run(const C3poPrefix& p, const std::vector<std::vector<float>>& omegas, float* out_h = nullptr,
                                 std::vector<LayerSave>* attn_saves = nullptr, std::vector<LayerSave>* mlp_saves = nullptr,
                                 LayerSave* block_save = nullptr) {
    const int R = static_cast<int>(omegas.size()), H = cfg_.hidden, L = cfg_.layers;
    LayerPatch lp;
    for (int j = 0; j < R; ++j) lp.mix[j] = omegas[j];
    std::vector<float> hs(static_cast<size_t>(R) * H);
    cached_block(std::vector<const C3poPrefix*>(R, &p), &lp, cfg_, hs.data(), block_save);
    Patch none;
    for (int l = p.first_layer + 1; l < L; ++l) {
      for (int j = 0; j < R; ++j)
        s_.dec_.attn_forward(l, hs.data() + static_cast<size_t>(j) * H, 1, last_, s_.cache_[l], attn_saves ? &(*attn_saves)[l] : nullptr);
      s_.dec_.mlp_forward(l, hs.data(), R, 0, none, nullptr, mlp_saves ? &(*mlp_saves)[l] : nullptr);
    }
    evaluations_ += R;
    if (out_h) std::copy(hs.begin(), hs.end(), out_h);
    return scorer_.score(hs.data(), R);
  }

  // A_e = <dMargin/d(output of p's layer), expert e's output> for every expert, at the row `omega`.
  std::vector<double> expert_effects(const C3poPrefix& p, const std::vector<float>& omega, Scorer::Score* score) {
    const int H = cfg_.hidden, L = cfg_.layers, E = cfg_.experts;
    std::vector<LayerSave> attn(L), mlp(L);
    std::vector<float> h(H), dh(H);
    *score = run(p, {omega}, h.data(), &attn, &mlp)[0];
    scorer_.margin_grad(h.data(), score->rival, dh.data());
    const std::map<int, float*> none;
    for (int l = L - 1; l > p.first_layer; --l)
      if (s_.dec_.mlp_backward(l, mlp[l], dh.data(), false, nullptr, none)) s_.dec_.attn_backward(l, attn[l], dh.data());
    std::vector<double> a(E);
    for (int e = 0; e < E; ++e) {
      const float* oe = p.experts.data() + static_cast<size_t>(e) * H;
      double d = 0;
      for (int c = 0; c < H; ++c) d += static_cast<double>(dh[c]) * oe[c];
      a[e] = d;
    }
    return a;
  }

  bool better(double a, double b) const { return fix_ ? a > b : a < b; }
  bool flipped(const Scorer::Score& sc) const { return (sc.answer == o_.label) == fix_; }

  // Greedy swaps at p's layer from `omega`, then (with adam) Adam on log omega unless a swap already flipped the
  // answer. Fills change.swaps, .omega (when the margin moved), .gradient, .evaluations; returns the final row.
  std::vector<float> layer(const std::shared_ptr<C3poPrefix>& p, std::vector<float> omega, HeadroomChange& change, bool adam) {
    const int E = cfg_.experts, k = cfg_.top_k, l = p->first_layer;
    const int moves = o_.moves > 0 ? o_.moves : k;
    const int before = evaluations_;
    Scorer::Score cur;
    bool moved = false;
    for (int move = 0; move < moves; ++move) {
      s_.check_cancelled();
      const std::vector<double> a = expert_effects(*p, omega, &cur);
      if (move == 0 && flipped(cur)) break;  // already flipped by changes below this layer (joint search)
      // The current top-k set and its weights, as the engine routes the row.
      LayerPatch lp;
      lp.mix[0] = omega;
      std::vector<float> prob(E), w(k);
      std::vector<int32_t> sel(k);
      bool mixed = false;
      const std::vector<float>& bias = s_.m_.checkpoint().layers[l].selection_bias;
      route_token(cfg_.router, p->router.data(), E, k, bias.empty() ? nullptr : bias.data(), &lp, 0, prob.data(), sel.data(), w.data(),
                  &mixed);
      struct Candidate {
        double estimate;
        int out, in;
      };
      std::vector<Candidate> cands;
      for (int s = 0; s < k; ++s)
        for (int b = 0; b < E; ++b)
          if (std::find(sel.begin(), sel.end(), b) == sel.end()) cands.push_back({w[s] * (a[b] - a[sel[s]]), sel[s], b});
      std::stable_sort(cands.begin(), cands.end(), [&](const Candidate& x, const Candidate& y) { return better(x.estimate, y.estimate); });
      if (o_.candidates > 0 && static_cast<int>(cands.size()) > o_.candidates) cands.resize(o_.candidates);
      std::vector<std::vector<float>> rows;
      for (const Candidate& c : cands) {
        std::vector<float> r = omega;
        std::swap(r[c.out], r[c.in]);
        rows.push_back(std::move(r));
      }
      if (rows.empty()) break;
      const std::vector<Scorer::Score> scores = run(*p, rows);
      int best = 0;
      for (int i = 1; i < static_cast<int>(scores.size()); ++i)
        if (better(scores[i].margin, scores[best].margin)) best = i;
      if (!better(scores[best].margin, cur.margin)) break;  // no swap moves the margin the right way
      omega = rows[best];
      cur = scores[best];
      moved = true;
      change.swaps.push_back({l, cands[best].out, cands[best].in});
      if (flipped(cur)) break;
    }
    if (adam && !flipped(cur) && o_.steps > 0) {
      // C3PO's oracle on this row: Adam on log omega, the loss the label's (or, to break, the rival's) cross-entropy.
      C3poNeighbour nb{p, fix_ ? o_.label : cur.rival, 1.f, o_.options};
      C3poOptions co;
      co.layers = {l};
      co.core_experts = E;
      co.steps = o_.steps;
      co.lr_start = o_.lr_start;
      co.lr_end = o_.lr_end;
      std::vector<float> start = omega;
      for (float& x : start) x = std::max(x, 1e-30f);
      const C3poResult r = c3po_ngd(s_.m_, {{l, start}}, {nb}, co);
      const std::vector<float>& after = r.omega_after.at(l);
      const Scorer::Score sc = run(*p, {after})[0];
      change.gradient = true;
      if (better(sc.margin, cur.margin)) {
        omega = after;
        cur = sc;
        moved = true;
      }
    }
    change.evaluations += evaluations_ - before;
    if (moved) change.omega[l] = omega;
    return omega;
  }

  // The exact answer and margin with mix rows at the last position (a forward of the last token).
  Scorer::Score verify(const std::vector<int>& prompt, const std::map<int, std::vector<float>>& rows) {
    Patch patch;
    for (const auto& kv : rows) patch.layers[kv.first].mix[last_] = kv.second;
    std::vector<float> h(cfg_.hidden);
    s_.dec_.embed({prompt.back()}, h.data());
    for (int l = 0; l < cfg_.layers; ++l) s_.dec_.layer_forward(l, h.data(), 1, last_, s_.cache_[l], patch, nullptr, nullptr);
    return scorer_.score(h.data(), 1)[0];
  }

  int evaluations() const { return evaluations_; }

 private:
  SessionImpl& s_;
  const ModelConfig& cfg_;
  const HeadroomOptions& o_;
  const int last_;
  const bool fix_;
  Scorer scorer_;
  std::shared_ptr<SessionImpl> session_;  // non-owning: the prefixes of this search share the session's cache
  int evaluations_ = 0;
};

}  // namespace

HeadroomResult routing_headroom(Session& session, const std::vector<int>& prompt, const HeadroomOptions& o) {
  SessionImpl& s = engine_session(session, "routing_headroom");
  SessionImpl::CallScope scope(s);
  const ModelConfig& cfg = s.m_.checkpoint().config;
  const int E = cfg.experts, L = cfg.layers;
  require_score_router(cfg.router, "routing headroom");
  require_output_mixing(cfg.expert_mlp, "routing headroom");  // its candidates replay cached expert outputs by weight
  if (prompt.empty()) throw Error("BAD_TOKENS", "no prompt tokens");
  s.check_tokens(prompt, 0);
  if (o.label < 0 || o.label >= cfg.vocab) throw Error("BAD_TOKENS", "the label token is outside the vocabulary");
  for (int t : o.options)
    if (t < 0 || t >= cfg.vocab) throw Error("BAD_TOKENS", "an option token is outside the vocabulary");
  if (!o.options.empty() && std::find(o.options.begin(), o.options.end(), o.label) == o.options.end())
    throw Error("BAD_ARGUMENT", "the label must be one of the option tokens");
  if (o.options.size() == 1) throw Error("BAD_ARGUMENT", "a margin needs at least two option tokens");
  if (o.candidates < 0 || o.moves < 0 || o.steps < 0) throw Error("BAD_ARGUMENT", "candidates, moves and steps must be >= 0");
  std::vector<int> layers = o.layers;
  if (layers.empty())
    for (int l = 0; l < L; ++l)
      if (cfg.moe_layer[l]) layers.push_back(l);
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  for (int l : layers)
    if (l < 0 || l >= L || !cfg.moe_layer[l]) throw Error("BAD_ARGUMENT", "layer " + std::to_string(l) + " has no router");

  s.clear();
  s.on_device_ = false;  // replays run the CPU decoder against the session's cache
  const int last = static_cast<int>(prompt.size()) - 1;
  HeadroomResult res;
  try {
    Patch none;
    if (last > 0) s.forward(std::vector<int>(prompt.begin(), prompt.end() - 1), none, LogitsMode::None, nullptr);
    // The model's own pass at the last position, keeping every searched layer's parts.
    std::vector<float> h(cfg.hidden);
    s.dec_.embed({prompt.back()}, h.data());
    Search plain_probe(s, o, last, true);
    std::map<int, std::shared_ptr<C3poPrefix>> parts;
    for (int l = 0; l < L; ++l) {
      if (!std::binary_search(layers.begin(), layers.end(), l)) {
        s.dec_.layer_forward(l, h.data(), 1, last, s.cache_[l], none, nullptr, nullptr);
        continue;
      }
      s.dec_.attn_forward(l, h.data(), 1, last, s.cache_[l], nullptr);
      parts[l] = plain_probe.parts(l, h.data());
      cached_block({parts[l].get()}, nullptr, cfg, h.data(), nullptr);
    }
    const Scorer::Score base = plain_probe.verify(prompt, {});
    res.margin = base.margin;
    res.answer = base.answer;
    res.correct = base.answer == o.label;
    Search search(s, o, last, !res.correct);
    auto finish = [&](HeadroomChange& c) {
      const Scorer::Score sc = search.verify(prompt, c.omega);
      c.margin = sc.margin;
      c.answer = sc.answer;
      c.flipped = (sc.answer == o.label) != res.correct;
    };
    for (int l : layers) {
      HeadroomChange c;
      c.layer = l;
      search.layer(parts[l], scores_row(cfg, std::vector<float>(parts[l]->router.begin(), parts[l]->router.end())), c, true);
      finish(c);
      res.layers.push_back(std::move(c));
    }
    if (o.joint) {
      // Layer by layer from the lowest, each searched with the changes below it in place; then Adam on all rows.
      HeadroomChange& c = res.joint;
      c.layer = -1;
      std::map<int, std::vector<float>> rows;
      std::shared_ptr<C3poPrefix> lowest;
      std::vector<float> hj(cfg.hidden);
      s.dec_.embed({prompt.back()}, hj.data());
      for (int l = 0; l < L; ++l) {
        if (!std::binary_search(layers.begin(), layers.end(), l)) {
          s.dec_.layer_forward(l, hj.data(), 1, last, s.cache_[l], none, nullptr, nullptr);
          continue;
        }
        s.dec_.attn_forward(l, hj.data(), 1, last, s.cache_[l], nullptr);
        std::shared_ptr<C3poPrefix> p = search.parts(l, hj.data());
        if (!lowest) lowest = p;
        HeadroomChange step;  // Adam runs once, on every row together, below
        const std::vector<float> row =
            search.layer(p, scores_row(cfg, std::vector<float>(p->router.begin(), p->router.end())), step, false);
        rows[l] = row;
        c.swaps.insert(c.swaps.end(), step.swaps.begin(), step.swaps.end());
        c.evaluations += step.evaluations;
        if (!step.omega.empty()) c.omega[l] = row;
        LayerPatch lp;
        lp.mix[0] = row;
        cached_block({p.get()}, &lp, cfg, hj.data(), nullptr);
      }
      Scorer::Score sc = search.verify(prompt, c.omega);
      if (((sc.answer == o.label) == res.correct) && o.steps > 0 && lowest) {
        C3poNeighbour nb{lowest, res.correct ? sc.rival : o.label, 1.f, o.options};
        C3poOptions co;
        co.layers = layers;
        co.core_experts = E;
        co.steps = o.steps;
        co.lr_start = o.lr_start;
        co.lr_end = o.lr_end;
        for (auto& kv : rows)
          for (float& x : kv.second) x = std::max(x, 1e-30f);
        const C3poResult r = c3po_ngd(s.m_, rows, {nb}, co);
        c.gradient = true;
        const Scorer::Score after = search.verify(prompt, r.omega_after);
        c.evaluations += o.steps;
        if (res.correct ? after.margin < sc.margin : after.margin > sc.margin) c.omega = r.omega_after;
      }
      finish(c);
    }
  } catch (...) {
    s.clear();
    throw;
  }
  s.clear();
  return res;
}

}  // namespace routescope
