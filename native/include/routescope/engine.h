// Routescope engine: public C++ API. No Node, no UI: front ends (the Node-API binding, the C++ tests)
// sit on top of this header only.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace routescope {

// Every error a user can cause (bad checkpoint, bad patch, bad tokens) is an Error with a one-line message
// that names the file or argument and the problem.
class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;  // e.g. "BAD_CHECKPOINT", "BAD_CONFIG", "UNKNOWN_ARCH", "BAD_TOKENS", "BAD_PATCH", "TOO_LONG"
};

enum class Arch { Mixtral, Olmoe, Qwen2Moe, Qwen3Moe, DeepseekV2, DeepseekV3, Glm4Moe };
const char* arch_name(Arch a);

struct ModelInfo {
  std::string model_type;       // config.json "model_type"
  std::string dir;
  int num_layers = 0;
  int hidden_size = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int num_experts = 0;
  int top_k = 0;
  int expert_width = 0;         // moe intermediate size
  int shared_expert_width = 0;  // qwen2_moe; 0 when none
  bool norm_topk_prob = false;  // the router renormalises the selected weights
  std::string routing_rule;     // one line, e.g. "sigmoid + selection bias, group-limited top-8 of 256 (...), ×2.5"
  std::string router_scoring;   // "softmax" or "sigmoid": how router logits become the scores weights are taken from
  int max_position_embeddings = 0;
  std::vector<int> moe_layers;  // layers with a router (qwen2_moe may have dense layers)
  std::string dtype;            // dominant weight dtype: "F32", "F16", "BF16"
  std::string expert_layout;    // "per-expert" or "fused"
  int shards = 1;
  uint64_t parameters = 0;
  uint64_t active_parameters = 0;  // per token
  uint64_t weight_bytes = 0;       // mapped from disk
  std::vector<int> eos_token_ids;  // from config.json / generation_config.json
  std::vector<std::string> warnings;  // e.g. tensors present but not used (DeepSeek-V3's multi-token prediction layer)
  std::string backend = "cpu";
  std::string backend_note;      // why "auto" chose what it chose (e.g. no CUDA device), for a one-line notice
  std::string device;            // GPU name when backend == "cuda"
  int threads = 1;
};

// The one routing patch type. Layers and experts are 0-based.
struct LayerPatch {
  std::vector<int> mask;                 // router logit -> -inf before the softmax
  std::vector<int> force;                // always selected; each displaces the lowest-ranked selected expert
  std::vector<float> bias;               // additive on router logits at every position; empty or size E
  std::map<int, std::vector<float>> mix; // absolute position -> replacement softmax row (size E), before top-k
  int mix_tail_start = -1;               // JSON key "N+": this row replaces the softmax at every position >= N
  std::vector<float> mix_tail;
  const std::vector<float>* mix_row(int position) const {
    auto it = mix.find(position);
    if (it != mix.end()) return &it->second;
    return mix_tail_start >= 0 && position >= mix_tail_start ? &mix_tail : nullptr;
  }
};
struct Patch {
  std::map<int, LayerPatch> layers;
  bool empty() const { return layers.empty(); }
};
// Parses the patch JSON used everywhere: {"layers":{"<l>":{"mask":[..],"force":[..],"bias":{"<e>":v}|[..E],
// "mix":{"<pos>":[..E], "<pos>+":[..E]}}}}. Validates against the model (layer and expert ranges, k, sizes).
Patch parse_patch(const std::string& json, const ModelInfo& info);

// Routing of one layer for a contiguous span of positions, delivered while the forward runs.
struct LayerRouting {
  int layer = 0;
  int start = 0;  // absolute position of the first row
  int count = 0;  // rows
  int num_experts = 0;
  int top_k = 0;
  const float* router_logits = nullptr;  // [count, E] raw router output (fp32, before patch and softmax)
  const int32_t* experts = nullptr;      // [count, k] selected experts, highest weight first (ties: lower index)
  const float* weights = nullptr;        // [count, k] mixing weights actually applied
};
using RoutingCallback = std::function<void(const LayerRouting&)>;

enum class LogitsMode { None, Last, All };

struct ForwardResult {
  std::vector<float> logits;  // [rows, V]
  int rows = 0;
};

struct SampleOptions {
  int max_new_tokens = 64;
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;
  uint64_t seed = 0;
  std::vector<int> stop_tokens;  // EOS ids
};

struct GradRequest {
  std::vector<int> bias_layers;  // d loss / d (additive router-logit bias shared by all positions) per layer
  int target_start = -1;         // target token indices [start, end), each predicted from the position before; -1 = [1, T)
  int target_end = -1;
  // Optional: d loss / d theta where the softmax row at (mix_layer, mix_position) is replaced by softmax(theta).
  int mix_layer = -1;
  int mix_position = -1;
  std::vector<float> mix_logits;
};
struct GradResult {
  double loss = 0;
  std::map<int, std::vector<float>> bias_grad;
  std::vector<float> mix_grad;
};

// Continuous rerouting (arXiv:2510.14853): a router-logit offset delta per adapted layer, optimised on the
// self-supervised next-token loss of the context after prefill and then every `interval` generated tokens.
struct RerouteOptions {
  std::vector<int> layers;          // candidate layers; empty = every MoE layer
  int interval = 128;               // m
  int steps = 5;                    // optimiser steps per round
  float lr = 0.05f;
  bool adam = true;                 // false = plain SGD
  float layer_fraction = 1.0f;      // adapt only this fraction of candidates, ranked by routing confidence
  bool least_confident_first = true;// rank by C_l = -(1/k) sum log p (largest first) when true
};
struct RerouteRound {
  int position = 0;                 // context length when the round ran
  std::vector<int> layers;          // layers adapted in this round
  std::vector<double> losses;       // loss before each step
  std::map<int, float> confidence;  // C_l of every candidate layer
  std::map<int, std::vector<float>> delta;  // delta of every layer adapted so far, after this round
};
struct RerouteResult {
  std::vector<int> tokens;          // generated
  std::vector<RerouteRound> rounds;
  std::map<int, std::vector<float>> delta;  // final delta per adapted layer
};

// C3PO (arXiv:2504.07964) NGD: re-mix the last prompt position's routing in critical layers so that the
// kernel-weighted loss of reference neighbours, run with that routing, goes down.
struct C3poPrefix;  // a reference item with its prefix cached (opaque)
struct C3poNeighbour {
  std::shared_ptr<C3poPrefix> prefix;
  int answer = 0;      // token id the neighbour should predict after its prompt
  float weight = 1.f;  // kernel weight (normalised by the engine)
};
struct C3poOptions {
  std::vector<int> layers;      // critical layers
  int core_experts = 20;        // optimise the top-n experts of the original routing; the rest stay frozen
  int steps = 10;
  float lr_start = 1e-2f, lr_end = 1e-5f;  // cosine schedule, Adam
};
struct C3poResult {
  std::map<int, std::vector<float>> omega_before, omega_after;  // per critical layer, size E
  std::map<int, std::vector<int>> core;                         // core experts per layer
  std::vector<double> losses;                                   // surrogate loss before each step, and after the last
  std::map<int, std::vector<float>> first_grad;                 // dLoss/dtheta at the start (all experts)
};

class Model;

// A session owns a KV cache; forward() appends tokens after what is already cached.
class Session {
 public:
  virtual ~Session() = default;
  virtual ForwardResult forward(const std::vector<int>& tokens, const Patch& patch, LogitsMode mode,
                                const RoutingCallback& on_layer = nullptr) = 0;
  // Prefill + decode; on_token is called for every generated token (return false to stop early).
  virtual std::vector<int> generate(const std::vector<int>& prompt, const Patch& patch, const SampleOptions& opts,
                                    const std::function<bool(int)>& on_token = nullptr,
                                    const RoutingCallback& on_layer = nullptr) = 0;
  // Full-sequence loss and router gradients (fresh, does not touch the KV cache).
  virtual GradResult grad(const std::vector<int>& tokens, const Patch& patch, const GradRequest& req) = 0;
  // Generation with continuous rerouting; on_round reports each finished round.
  virtual RerouteResult generate_rerouted(const std::vector<int>& prompt, const Patch& patch,
                                          const SampleOptions& opts, const RerouteOptions& ropts,
                                          const std::function<bool(int)>& on_token = nullptr,
                                          const std::function<void(const RerouteRound&)>& on_round = nullptr) = 0;
  // Mean over positions of the hidden state entering `layer` (num_layers = the last layer's output), for a fresh
  // sequence; used as a text embedding when no external embedder is configured. Resets the session.
  virtual std::vector<float> mean_hidden(const std::vector<int>& tokens, int layer) = 0;
  virtual void reset() = 0;
  // Forgets the cached positions >= `position` (0 <= position <= position()); the next forward() continues
  // there, e.g. to re-run a prompt's last token with another patch without re-running the prefix.
  virtual void truncate(int position) = 0;
  virtual int position() const = 0;
  // Cooperative cancellation: the running call throws Error("CANCELLED", ...) at the next layer boundary.
  virtual void cancel() = 0;
};

struct LoadOptions {
  int threads = 0;              // 0 = hardware concurrency
  std::string backend = "auto"; // auto | cpu | cuda
};

class Model {
 public:
  virtual ~Model() = default;
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opts = {});
  virtual const ModelInfo& info() const = 0;
  virtual std::unique_ptr<Session> create_session(int max_context = 0) = 0;
  // C3PO: cache a reference item's prompt (all but the last token in every layer, the last token's hidden state
  // at the input of `first_layer`); then optimise a test prompt's last-position routing against neighbours.
  virtual std::shared_ptr<C3poPrefix> c3po_prefix(const std::vector<int>& prompt, int first_layer) = 0;
  // omega_init per critical layer: the test prompt's last-position softmax (size E), the starting point.
  virtual C3poResult c3po_ngd(const std::map<int, std::vector<float>>& omega_init,
                              const std::vector<C3poNeighbour>& neighbours, const C3poOptions& opts) = 0;
};

}  // namespace routescope
