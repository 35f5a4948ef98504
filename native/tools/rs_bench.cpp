// Engine micro-benchmark without Node: `rs_bench --model DIR [--prompt-tokens N] [--decode-tokens M] [--threads T]
// [--repeat R] [--activations fp32|bf16] [--weights auto|mapped|resident] [--kv-cache fp32|bf16]` prints prefill/decode
// tokens per second (best of R) as JSON, with the process CPU seconds of each phase (on a machine shared with other
// work, tokens per CPU-second move far less than tokens per wall-second);
// `rs_bench --bandwidth [--threads T] [--probe-seconds S]` measures the memory read bandwidth that bounds decode: the
// best single pass and the rate sustained over S seconds (default 1, about one decode run);
// `rs_bench --attention [--prompt-tokens N] [--kv-cache fp32|bf16]` times the fused attention alone (keys and values
// stored in that dtype);
// `rs_bench --experts --model DIR [--prompt-tokens N] [--kernels generic|avx512|avx512_bf16|avx512_bf16_rounded] [--repeat R]` times the
// routed experts of the first MoE layer alone (random routing, N tokens), for A/B measurements of the kernel families;
// `rs_bench --stream --model DIR` streams the LM head one row at a time against the bandwidth probe. --weights applies
// to all three model modes (default auto, as the engine).
#include <sys/resource.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/attention.h"
#include "cpu/convert.h"
#include "cpu/forward.h"
#include "cpu/matmul.h"
#include "cpu/moe_experts.h"
#include "model/model.h"
#include "routescope/engine.h"

using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// User + system CPU seconds of the whole process so far (all threads).
static double cpu_seconds() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

// Sums words [a, b) of a buffer: the plain loop, and 256-bit loads where the CPU has AVX2 (a few per cent more on
// some CPUs). The probe takes the faster, so the bound it sets is the most this machine reads, not a weak loop's.
static uint64_t sum_words(const uint64_t* buf, size_t a, size_t b) {
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (size_t i = a; i + 4 <= b; i += 4) s0 += buf[i], s1 += buf[i + 1], s2 += buf[i + 2], s3 += buf[i + 3];
  return s0 + s1 + s2 + s3;
}
#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t sum_words_avx2(const uint64_t* buf, size_t a, size_t b) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = a; i + 16 <= b; i += 16) {
    s0 = _mm256_add_epi64(s0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i)));
    s1 = _mm256_add_epi64(s1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i + 4)));
    s2 = _mm256_add_epi64(s2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i + 8)));
    s3 = _mm256_add_epi64(s3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i + 12)));
  }
  uint64_t o[4];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
  return o[0] + o[1] + o[2] + o[3];
}
#endif

// Streams a buffer much larger than the caches with all threads, summing so the reads cannot be elided. best_gbps:
// the fastest single pass (about 20 ms each); sustained_gbps: all bytes over all time of the passes after the first
// 12, run for at least `seconds` - on a shared host bandwidth moves from one second to the next, and a
// decode run lasts about a second, so its bound is the rate the memory keeps up over as long, not its best burst.
struct ReadBandwidth {
  double best_gbps = 0, sustained_gbps = 0, sustained_seconds = 0;
};
static ReadBandwidth read_bandwidth(int threads, double seconds) {
  const size_t bytes = size_t(1) << 30;
  std::vector<uint64_t> buf(bytes / 8);
  for (size_t i = 0; i < buf.size(); i += 512) buf[i] = i;  // touch every page
  std::fill(buf.begin(), buf.end(), 1);
  bool vector = false;
#if defined(__x86_64__)
  vector = __builtin_cpu_supports("avx2");
#endif
  ReadBandwidth out;
  double timed = 0;
  int timed_passes = 0;
  // The first 12 passes alternate the two read loops (best_gbps is the better of either); the sustained passes that
  // follow use the vector loop alone where there is one.
  for (int rep = 0; rep < 12 || timed < seconds; ++rep) {
    const bool sustained = rep >= 12;
    const bool wide = vector && (sustained || rep % 2 == 1);
    std::atomic<uint64_t> total{0};
    auto t0 = Clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        size_t n = buf.size(), a = n * t / threads, b = n * (t + 1) / threads;
#if defined(__x86_64__)
        total += wide ? sum_words_avx2(buf.data(), a, b) : sum_words(buf.data(), a, b);
#else
        total += sum_words(buf.data(), a, b);
#endif
      });
    for (auto& t : ts) t.join();
    double dt = seconds_since(t0);
    if (total.load() == 0) std::printf("#");
    out.best_gbps = std::max(out.best_gbps, bytes / dt / 1e9);
    if (sustained) timed += dt, ++timed_passes;
  }
  out.sustained_seconds = timed;
  out.sustained_gbps = timed_passes * double(bytes) / timed / 1e9;
  return out;
}
static double read_bandwidth_gbps(int threads) { return read_bandwidth(threads, 0).best_gbps; }

// GFLOP per call of the routed experts for T tokens.
// The checkpoint with its weights where the engine would keep them for --weights.
static std::unique_ptr<routescope::Checkpoint> open_checkpoint(const std::string& dir, const std::string& weights) {
  return routescope::Checkpoint::open(dir, [&](uint64_t bytes) { return routescope::choose_residency(weights, bytes, dir); });
}

static int experts_bench(const std::string& dir, const std::string& weights, int T, int threads, int repeat,
                         const std::string& kernels) {
  auto ck = open_checkpoint(dir, weights);
  const auto& cfg = ck->config;
  int layer = 0;
  while (layer < cfg.layers && !ck->layers[layer].moe) ++layer;
  if (layer == cfg.layers) {
    std::fprintf(stderr, "rs_bench: %s has no MoE layer\n", dir.c_str());
    return 1;
  }
  const auto& w = ck->layers[layer];
  routescope::ExpertKernels family = routescope::ExpertKernels::Auto;
  if (kernels == "generic") family = routescope::ExpertKernels::Generic;
  else if (kernels == "avx512") family = routescope::ExpertKernels::Avx512;
  else if (kernels == "avx512_bf16") family = routescope::ExpertKernels::Avx512Bf16;
  else if (kernels == "avx512_bf16_rounded") family = routescope::ExpertKernels::Avx512Bf16Rounded;
  else if (!kernels.empty() && kernels != "auto") {
    std::fprintf(stderr, "rs_bench: --kernels must be auto, generic, avx512, avx512_bf16 or avx512_bf16_rounded\n");
    return 2;
  }
  if (!routescope::expert_kernels_available(family)) {
    std::fprintf(stderr, "rs_bench: this CPU cannot run --kernels %s\n", kernels.c_str());
    return 1;
  }
  const int H = cfg.hidden, E = cfg.experts, k = cfg.top_k, I = cfg.expert_width;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> x(size_t(T) * H), y(size_t(T) * H), wts(size_t(T) * k);
  std::vector<int32_t> sel(size_t(T) * k);
  for (auto& v : x) v = nd(rng);
  for (int t = 0; t < T; ++t) {
    std::vector<int> perm(E);
    for (int e = 0; e < E; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int s = 0; s < k; ++s) sel[size_t(t) * k + s] = perm[s], wts[size_t(t) * k + s] = 1.f / k;
  }
  routescope::ThreadPool pool(threads);
  routescope::moe_experts_forward(pool, x.data(), T, k, sel.data(), wts.data(), w.gate, w.up, w.down, y.data(),
                                  nullptr, nullptr, nullptr, family);  // warm-up: maps the weights in
  double wall = 1e30, cpu = 1e30;
  for (int r = 0; r < repeat; ++r) {
    const double c0 = cpu_seconds();
    const auto t0 = Clock::now();
    routescope::moe_experts_forward(pool, x.data(), T, k, sel.data(), wts.data(), w.gate, w.up, w.down, y.data(),
                                    nullptr, nullptr, nullptr, family);
    wall = std::min(wall, seconds_since(t0));
    cpu = std::min(cpu, cpu_seconds() - c0);
  }
  const double gflop = 2.0 * T * k * 3.0 * I * H / 1e9;
  std::printf("{\"experts_kernels\": \"%s\", \"tokens\": %d, \"threads\": %d, \"repeat\": %d, \"seconds\": %.4f, "
              "\"cpu_seconds\": %.4f, \"gflops\": %.1f, \"gflops_per_cpu_second\": %.1f}\n",
              routescope::expert_kernels_name(family, w.gate[0].dtype), T, threads, repeat, wall, cpu, gflop / wall,
              gflop / cpu);
  return 0;
}

// One-row products streaming the LM head (decode's largest read), interleaved with the bandwidth probe: GB/s of each.
static int stream_bench(const std::string& dir, const std::string& weights, int threads, int repeat) {
  auto ck = open_checkpoint(dir, weights);
  const routescope::Mat& W = ck->lm_head;
  const size_t bytes = size_t(W.rows) * W.cols * routescope::dtype_size(W.dtype);
  std::vector<float> x(W.cols, 0.01f), y(W.rows);
  routescope::ThreadPool pool(threads);
  routescope::matmul(pool, x.data(), 1, W, y.data());  // maps the weights in
  double best = 0, probe = 0;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = Clock::now();
    routescope::matmul(pool, x.data(), 1, W, y.data());
    best = std::max(best, bytes / seconds_since(t0) / 1e9);
    if (r % 4 == 0) probe = std::max(probe, read_bandwidth_gbps(threads));
  }
  std::printf("{\"lm_head_bytes\": %zu, \"threads\": %d, \"stream_gbps\": %.2f, \"probe_gbps\": %.2f, \"fraction\": %.3f}\n",
              bytes, threads, best, probe, best / probe);
  return 0;
}

// The fused causal attention alone (16 heads x 128, the bench model's shape) over an N-token prompt, keys and values
// stored as kv_cache says: GFLOP/s.
static int attention_bench(int T, int threads, int repeat, routescope::DType kv_dtype) {
  const int heads = 16, dim = 128;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<std::vector<float>> K(heads, std::vector<float>(size_t(T) * dim)), V(heads, std::vector<float>(size_t(T) * dim));
  for (auto& h : K) for (auto& x : h) x = nd(rng);
  for (auto& h : V) for (auto& x : h) x = nd(rng);
  std::vector<float> q(size_t(T) * heads * dim), out(q.size());
  for (auto& x : q) x = nd(rng);
  const bool bf16 = kv_dtype == routescope::DType::BF16;
  std::vector<std::vector<uint16_t>> K16(bf16 ? heads : 0), V16(bf16 ? heads : 0);
  for (size_t h = 0; h < K16.size(); ++h)
    for (size_t i = 0; i < K[h].size(); ++i) K16[h].push_back(routescope::f32_to_bf16(K[h][i])), V16[h].push_back(routescope::f32_to_bf16(V[h][i]));
  routescope::ThreadPool pool(threads);
  routescope::AttentionShape shape{heads, heads, dim, dim, 1.f / std::sqrt(float(dim)), 0};
  auto run = [&] {
    return bf16 ? routescope::attention_fused(pool, shape, q.data(), T, 0, K16, V16, out.data())
                : routescope::attention_fused(pool, shape, q.data(), T, 0, K, V, out.data());
  };
  if (!run()) {
    std::fprintf(stderr, "rs_bench: no fused attention kernel on this CPU\n");
    return 1;
  }
  double wall = 1e30, cpu = 1e30;
  for (int r = 0; r < repeat; ++r) {
    const double c0 = cpu_seconds();
    const auto t0 = Clock::now();
    run();
    wall = std::min(wall, seconds_since(t0));
    cpu = std::min(cpu, cpu_seconds() - c0);
  }
  const double gflop = 2.0 * 2.0 * heads * dim * (double(T) * (T + 1) / 2) / 1e9;  // q·k and p·v over the causal pairs
  std::printf("{\"attention_tokens\": %d, \"kv_cache\": \"%s\", \"threads\": %d, \"seconds\": %.4f, \"cpu_seconds\": %.4f, "
              "\"gflops\": %.1f, \"gflops_per_cpu_second\": %.1f}\n", T, bf16 ? "bf16" : "fp32", threads, wall, cpu,
              gflop / wall, gflop / cpu);
  return 0;
}

int main(int argc, char** argv) {
  std::string model;
  int prompt = 512, decode = 32, threads = 0, repeat = 1;
  bool bandwidth = false, experts = false, stream = false, attention = false;
  std::string kernels, activations = "fp32", weights = "auto", kv_cache = "fp32";
  double probe_seconds = 1.0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "rs_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") model = next();
    else if (a == "--prompt-tokens") prompt = std::atoi(next());
    else if (a == "--decode-tokens") decode = std::atoi(next());
    else if (a == "--threads") threads = std::atoi(next());
    else if (a == "--repeat") repeat = std::max(1, std::atoi(next()));
    else if (a == "--bandwidth") bandwidth = true;
    else if (a == "--probe-seconds") probe_seconds = std::atof(next());
    else if (a == "--experts") experts = true;
    else if (a == "--stream") stream = true;
    else if (a == "--attention") attention = true;
    else if (a == "--kernels") kernels = next();
    else if (a == "--activations") activations = next();
    else if (a == "--weights") weights = next();
    else if (a == "--kv-cache") kv_cache = next();
    else {
      std::fprintf(stderr, "rs_bench: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (threads <= 0) threads = int(std::thread::hardware_concurrency());
  routescope::DType kv_dtype;
  try {
    kv_dtype = routescope::kv_cache_dtype(kv_cache);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rs_bench: --kv-cache: %s\n", e.what());
    return 2;
  }
  if (attention) return attention_bench(prompt, threads, repeat, kv_dtype);
  if (bandwidth) {
    const ReadBandwidth bw = read_bandwidth(threads, probe_seconds);
    std::printf("{\"read_bandwidth_gbps\": %.2f, \"sustained_gbps\": %.2f, \"sustained_seconds\": %.2f, \"threads\": %d}\n",
                bw.best_gbps, bw.sustained_gbps, bw.sustained_seconds, threads);
    return 0;
  }
  if (model.empty()) {
    std::fprintf(stderr, "rs_bench: --model DIR is required\n");
    return 2;
  }
  try {
    routescope::check_weights_choice(weights);
    if (experts) return experts_bench(model, weights, prompt, threads, repeat, kernels);
    if (stream) return stream_bench(model, weights, threads, repeat);
    auto m = routescope::Model::load(model, {threads, "cpu", activations, weights, kv_cache});
    const auto& info = m->info();
    std::mt19937 rng(1);
    std::vector<int> tokens(prompt);
    for (auto& t : tokens) t = int(rng() % info.vocab_size);
    routescope::Patch none;
    {  // warm-up, as `routescope bench`: one prefill of the prompt (maps the weights, sizes the buffers), one step
      auto s = m->create_session();
      s->forward(tokens, none, routescope::LogitsMode::Last);
      s->reset();
      s->forward({1}, none, routescope::LogitsMode::Last);
    }
    double prefill = 1e30, dec = 1e30, prefill_cpu = 1e30, dec_cpu = 1e30;
    for (int rep = 0; rep < repeat; ++rep) {
      auto s = m->create_session();
      double c0 = cpu_seconds();
      auto t0 = Clock::now();
      auto r = s->forward(tokens, none, routescope::LogitsMode::Last);
      prefill = std::min(prefill, seconds_since(t0));
      prefill_cpu = std::min(prefill_cpu, cpu_seconds() - c0);
      int next = int(std::max_element(r.logits.begin(), r.logits.end()) - r.logits.begin());
      c0 = cpu_seconds();
      t0 = Clock::now();
      for (int i = 0; i < decode; ++i) {
        r = s->forward({next}, none, routescope::LogitsMode::Last);
        next = int(std::max_element(r.logits.begin(), r.logits.end()) - r.logits.begin());
      }
      dec = std::min(dec, seconds_since(t0));
      dec_cpu = std::min(dec_cpu, cpu_seconds() - c0);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    std::printf("{\"prefill_tokens_per_s\": %.2f, \"decode_tokens_per_s\": %.2f, \"prefill_cpu_seconds\": %.3f, "
                "\"decode_cpu_seconds\": %.3f, \"prompt_tokens\": %d, \"decode_tokens\": %d, \"threads\": %d, "
                "\"repeat\": %d, \"peak_rss_mb\": %.1f, \"weight_bytes\": %llu, \"active_parameters\": %llu, "
                "\"activations\": \"%s\", \"weights\": \"%s\", \"kv_cache\": \"%s\"}\n",
                prompt / prefill, decode > 0 ? decode / dec : 0.0, prefill_cpu, dec_cpu, prompt, decode, threads, repeat,
                ru.ru_maxrss / 1024.0, (unsigned long long)info.weight_bytes,
                (unsigned long long)info.active_parameters, info.activations.c_str(), info.weights.c_str(),
                info.kv_cache.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rs_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
