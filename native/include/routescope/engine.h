// Routescope engine: public C++ API for running models. No Node, no UI: front ends (the Node-API binding, the C++
// tests, rs_bench) sit on top of this header and routescope/adapt.h (test-time adaptation).
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

enum class Arch { Mixtral, Olmoe, Qwen2Moe, Qwen3Moe, DeepseekV2, DeepseekV3, Glm4Moe, Phimoe, GraniteMoe, GptOss, Llama4 };
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
  std::string router_scoring;   // "softmax", "sigmoid" or "sparsemixer": how router logits become the scores weights are taken from
  int max_position_embeddings = 0;
  std::vector<int> moe_layers;  // layers with a router (qwen2_moe may have dense layers)
  std::string dtype;            // dominant weight dtype: "F32", "F16", "BF16"
  std::string expert_layout;    // "per-expert" or "fused"
  int shards = 1;
  uint64_t parameters = 0;
  uint64_t active_parameters = 0;  // per token
  uint64_t weight_bytes = 0;       // the safetensors files' bytes
  std::string weights = "mapped";  // "mapped" (read through the file mapping) or "resident" (copied into memory)
  std::vector<int> eos_token_ids;  // from config.json / generation_config.json
  std::vector<std::string> warnings;  // e.g. tensors present but not used (DeepSeek-V3's multi-token prediction layer)
  std::string backend = "cpu";
  std::string backend_note;      // why "auto" chose what it chose (e.g. no CUDA device), for a one-line notice
  std::string device;            // GPU name when backend == "cuda"
  int threads = 1;
  std::string activations = "fp32";  // what LoadOptions::activations resolved to on this CPU and these weights
  std::string kv_cache = "fp32";     // what LoadOptions::kv_cache resolved to on this backend
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
  // When asked (mean_hidden_layer >= 0): the mean over this call's tokens of the hidden state entering that layer
  // (num_layers = the last layer's output), e.g. a self-embedding taken from the prompt's own forward.
  std::vector<float> mean_hidden;
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

// A session owns a KV cache; forward() appends tokens after what is already cached.
class Session {
 public:
  virtual ~Session() = default;
  virtual ForwardResult forward(const std::vector<int>& tokens, const Patch& patch, LogitsMode mode,
                                const RoutingCallback& on_layer = nullptr, int mean_hidden_layer = -1) = 0;
  // Prefill + decode; on_token is called for every generated token (return false to stop early).
  virtual std::vector<int> generate(const std::vector<int>& prompt, const Patch& patch, const SampleOptions& opts,
                                    const std::function<bool(int)>& on_token = nullptr,
                                    const RoutingCallback& on_layer = nullptr) = 0;
  // Full-sequence loss and router gradients (fresh, does not touch the KV cache).
  virtual GradResult grad(const std::vector<int>& tokens, const Patch& patch, const GradRequest& req) = 0;
  // Mean over positions of the hidden state entering `layer` (num_layers = the last layer's output), for a fresh
  // sequence; used as a text embedding when no external embedder is configured. Resets the session.
  virtual std::vector<float> mean_hidden(const std::vector<int>& tokens, int layer) = 0;
  virtual void reset() = 0;
  // Forgets the cached positions >= `position` (0 <= position <= position()); the next forward() continues
  // there, e.g. to re-run a prompt's last token with another patch without re-running the prefix.
  virtual void truncate(int position) = 0;
  virtual int position() const = 0;

  // Calls on a session run one at a time: a call made while another thread's call runs throws Error("BUSY", ...),
  // and so do reset() and truncate(). A front end that hands calls to a worker thread reserves the session on the
  // thread that accepts the request: from reserve() to release(), another reserve(), reset() or truncate() throws
  // BUSY, and a cancel() cancels the reserved call even if the worker has not started it yet.
  virtual void reserve() = 0;
  // Ends a reservation, after its call has returned (or when the call will not be made); clears a pending cancel.
  virtual void release() = 0;
  // Cooperative cancellation: the running or reserved call throws Error("CANCELLED", ...) at the next layer
  // boundary (or as it starts). While the session is idle and unreserved, cancel() does nothing.
  virtual void cancel() = 0;
};

struct LoadOptions {
  int threads = 0;              // 0 = hardware concurrency
  std::string backend = "auto"; // auto | cpu | cuda
  // fp32 (default: what the parity tests hold to transformers) | bf16: in prefill, activations are rounded to bf16
  // before their products with BF16 weights (the routed experts and the attention projections), as llama.cpp's BF16
  // matmul does, and multiplied with vdpbf16ps at twice the fp32 rate. CPU backend, AVX512_BF16 CPUs, BF16 weights;
  // elsewhere the model runs fp32 and says so in ModelInfo::activations and warnings.
  std::string activations = "fp32";
  // auto (default) | mapped | resident: where the weights live (ModelInfo::weights says which). resident reads the
  // files into the process's memory once (decode streams them about a third faster on virtual machines, and the
  // files can change afterwards); mapped maps them (nothing copied, pages shared with the page cache). auto: resident
  // on the CPU backend when the files take at most half of the memory available, else mapped.
  std::string weights = "auto";
  // fp32 (default: the parity tests' precision) | bf16: every KV cache of the model's sessions holds keys and values
  // rounded to bf16 (nearest, ties to even), half the memory and half the bytes a decode step's attention reads; the
  // attention kernels read them as stored, the backward included (gradients of the forward that ran). CPU backend;
  // the CUDA backend keeps fp32 and says so in ModelInfo::kv_cache and warnings.
  std::string kv_cache = "fp32";
};

class Model {
 public:
  virtual ~Model() = default;
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opts = {});
  virtual const ModelInfo& info() const = 0;
  // A session keeps a reference to this model: the model must outlive its sessions (and C3PO prefixes).
  virtual std::unique_ptr<Session> create_session(int max_context = 0) = 0;
};

}  // namespace routescope
