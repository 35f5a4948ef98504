// Conversions between JS values and the engine's types (see convert.h).
#include "convert.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

namespace routescope::binding {

Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

[[noreturn]] void Throw(Napi::Env env, const std::string& code, const std::string& message) {
  throw MakeError(env, code, message);
}

// Converts whatever the engine threw into a code and a message; never lets an exception through.
CodedError Classify(std::exception_ptr eptr) {
  try {
    std::rethrow_exception(eptr);
  } catch (const Error& e) {
    return {e.code(), e.what()};
  } catch (const std::bad_alloc&) {
    return {"OOM", "out of memory"};
  } catch (const Napi::Error& e) {
    return {"INTERNAL", e.Message()};
  } catch (const std::exception& e) {
    return {"INTERNAL", std::string("internal error: ") + e.what()};
  } catch (...) {
    return {"INTERNAL", "internal error: unknown exception"};
  }
}

Napi::Error ToJsError(Napi::Env env, std::exception_ptr eptr) {
  try {
    std::rethrow_exception(eptr);
  } catch (const Napi::Error& e) {
    return e;
  } catch (...) {
    CodedError e = Classify(std::current_exception());
    return MakeError(env, e.code, e.message);
  }
}

Napi::Promise RejectedPromise(Napi::Env env, std::exception_ptr eptr) {
  Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
  deferred.Reject(ToJsError(env, eptr).Value());
  return deferred.Promise();
}

// ---------------------------------------------------------------------------------------------------------------
// Arguments and options in.

std::vector<int> ReadIntArray(Napi::Env env, const Napi::Value& value, const char* what) {
  std::vector<int> out;
  if (value.IsTypedArray()) {
    Napi::TypedArray typed = value.As<Napi::TypedArray>();
    if (typed.TypedArrayType() != napi_int32_array) Throw(env, "BAD_ARGUMENT", std::string(what) + " must be an Int32Array");
    Napi::Int32Array ints = value.As<Napi::Int32Array>();
    out.assign(ints.Data(), ints.Data() + ints.ElementLength());
    return out;
  }
  if (value.IsArray()) {
    Napi::Array array = value.As<Napi::Array>();
    out.reserve(array.Length());
    for (uint32_t i = 0; i < array.Length(); ++i) {
      Napi::Value item = array.Get(i);
      if (!item.IsNumber()) Throw(env, "BAD_ARGUMENT", std::string(what) + " must contain integers");
      double d = item.As<Napi::Number>().DoubleValue();
      if (!std::isfinite(d) || d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0)
        Throw(env, "BAD_ARGUMENT", std::string(what) + " must contain 32-bit integers");
      out.push_back(static_cast<int>(d));
    }
    return out;
  }
  Throw(env, "BAD_ARGUMENT", std::string(what) + " must be an Int32Array or an array of integers");
}

std::vector<float> ReadFloatArray(Napi::Env env, const Napi::Value& value, const char* what) {
  std::vector<float> out;
  if (value.IsTypedArray()) {
    Napi::TypedArray typed = value.As<Napi::TypedArray>();
    if (typed.TypedArrayType() == napi_float32_array) {
      Napi::Float32Array floats = value.As<Napi::Float32Array>();
      out.assign(floats.Data(), floats.Data() + floats.ElementLength());
      return out;
    }
    if (typed.TypedArrayType() == napi_float64_array) {
      Napi::Float64Array doubles = value.As<Napi::Float64Array>();
      for (size_t i = 0; i < doubles.ElementLength(); ++i) out.push_back(static_cast<float>(doubles[i]));
      return out;
    }
  } else if (value.IsArray()) {
    Napi::Array array = value.As<Napi::Array>();
    for (uint32_t i = 0; i < array.Length(); ++i) {
      Napi::Value item = array.Get(i);
      if (!item.IsNumber()) Throw(env, "BAD_ARGUMENT", std::string(what) + " must contain numbers");
      out.push_back(item.As<Napi::Number>().FloatValue());
    }
    return out;
  }
  Throw(env, "BAD_ARGUMENT", std::string(what) + " must be a Float32Array or an array of numbers");
}

Napi::Object OptionsObject(Napi::Env env, const Napi::CallbackInfo& info, size_t index, bool required) {
  if (info.Length() <= index || info[index].IsUndefined() || info[index].IsNull()) {
    if (required) Throw(env, "BAD_ARGUMENT", "options object expected");
    return Napi::Object::New(env);
  }
  if (!info[index].IsObject()) Throw(env, "BAD_ARGUMENT", "options must be an object");
  return info[index].As<Napi::Object>();
}

bool Has(const Napi::Object& obj, const char* key) {
  if (!obj.Has(key)) return false;
  Napi::Value v = obj.Get(key);
  return !v.IsUndefined() && !v.IsNull();
}

bool BoolOption(Napi::Env env, const Napi::Object& obj, const char* key, bool fallback) {
  if (!Has(obj, key)) return fallback;
  Napi::Value v = obj.Get(key);
  if (!v.IsBoolean()) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

double NumberOption(Napi::Env env, const Napi::Object& obj, const char* key, double fallback) {
  if (!Has(obj, key)) return fallback;
  Napi::Value v = obj.Get(key);
  if (!v.IsNumber()) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be finite");
  return d;
}

int IntOption(Napi::Env env, const Napi::Object& obj, const char* key, int fallback) {
  double d = NumberOption(env, obj, key, fallback);
  if (d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0)
    Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be an integer");
  return static_cast<int>(d);
}

int NonNegativeInt(Napi::Env env, const Napi::Value& v, const std::string& what) {
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < 0 || d > 2147483647.0)
    Throw(env, "BAD_ARGUMENT", what + " must be a non-negative integer");
  return static_cast<int>(d);
}

std::string StringOption(Napi::Env env, const Napi::Object& obj, const char* key, const std::string& fallback) {
  if (!Has(obj, key)) return fallback;
  Napi::Value v = obj.Get(key);
  if (!v.IsString()) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

Napi::Function CallbackOption(Napi::Env env, const Napi::Object& obj, const char* key) {
  if (!Has(obj, key)) return Napi::Function();
  Napi::Value v = obj.Get(key);
  if (!v.IsFunction()) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be a function");
  return v.As<Napi::Function>();
}

std::map<int, std::vector<float>> ReadLayerMap(Napi::Env env, const Napi::Value& value, const char* what) {
  if (!value.IsObject() || value.IsArray())
    Throw(env, "BAD_ARGUMENT", std::string(what) + " must be an object {\"<layer>\": Float32Array}");
  std::map<int, std::vector<float>> out;
  Napi::Object obj = value.As<Napi::Object>();
  Napi::Array keys = obj.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string key = keys.Get(i).ToString().Utf8Value();
    char* end = nullptr;
    long layer = std::strtol(key.c_str(), &end, 10);
    if (key.empty() || *end != '\0' || layer < 0 || layer > 1000000)
      Throw(env, "BAD_ARGUMENT", std::string(what) + " key \"" + key + "\" is not a layer index");
    out[static_cast<int>(layer)] = ReadFloatArray(env, obj.Get(key), (std::string(what) + " row").c_str());
  }
  return out;
}

SampleOptions ReadSampleOptions(Napi::Env env, const Napi::Object& options) {
  SampleOptions opts;
  opts.max_new_tokens = IntOption(env, options, "maxNewTokens", opts.max_new_tokens);
  opts.temperature = static_cast<float>(NumberOption(env, options, "temperature", opts.temperature));
  opts.top_p = static_cast<float>(NumberOption(env, options, "topP", opts.top_p));
  const double seed = NumberOption(env, options, "seed", 0);
  if (seed < 0 || seed != std::floor(seed)) Throw(env, "BAD_ARGUMENT", "option seed must be a non-negative integer");
  opts.seed = static_cast<uint64_t>(seed);
  if (Has(options, "stopTokens")) opts.stop_tokens = ReadIntArray(env, options.Get("stopTokens"), "stopTokens");
  return opts;
}

RerouteOptions ReadRerouteOptions(Napi::Env env, const Napi::Object& options) {
  if (!Has(options, "reroute") || !options.Get("reroute").IsObject())
    Throw(env, "BAD_ARGUMENT",
          "option reroute must be an object {interval, steps, lr, optimizer, layerFraction, leastConfidentFirst, "
          "resetAdamEachRound, sinceLastRound}");
  Napi::Object ro = options.Get("reroute").As<Napi::Object>();
  RerouteOptions opts;
  if (Has(ro, "layers")) opts.layers = ReadIntArray(env, ro.Get("layers"), "reroute.layers");
  opts.interval = IntOption(env, ro, "interval", opts.interval);
  opts.steps = IntOption(env, ro, "steps", opts.steps);
  opts.lr = static_cast<float>(NumberOption(env, ro, "lr", opts.lr));
  std::string optimizer = StringOption(env, ro, "optimizer", "adam");
  if (optimizer != "adam" && optimizer != "sgd")
    Throw(env, "BAD_ARGUMENT", "option reroute.optimizer must be 'adam' or 'sgd'");
  opts.adam = optimizer == "adam";
  opts.layer_fraction = static_cast<float>(NumberOption(env, ro, "layerFraction", opts.layer_fraction));
  opts.least_confident_first = BoolOption(env, ro, "leastConfidentFirst", opts.least_confident_first);
  opts.reset_adam_each_round = BoolOption(env, ro, "resetAdamEachRound", opts.reset_adam_each_round);
  opts.since_last_round = BoolOption(env, ro, "sinceLastRound", opts.since_last_round);
  return opts;
}

Patch ReadPatch(Napi::Env env, const Napi::Object& options, const ModelInfo& info) {
  std::string json = StringOption(env, options, "patch", "");
  if (json.empty()) return Patch{};
  return parse_patch(json, info);
}

// ---------------------------------------------------------------------------------------------------------------
// Results out.

Napi::Int32Array ToInt32Array(Napi::Env env, const int32_t* values, size_t count) {
  Napi::Int32Array out = Napi::Int32Array::New(env, count);
  if (count) std::memcpy(out.Data(), values, count * sizeof(int32_t));
  return out;
}

Napi::Float32Array ToFloat32Array(Napi::Env env, const float* values, size_t count) {
  Napi::Float32Array out = Napi::Float32Array::New(env, count);
  if (count) std::memcpy(out.Data(), values, count * sizeof(float));
  return out;
}

Napi::Int32Array ToInt32Array(Napi::Env env, const std::vector<int>& values) {
  return ToInt32Array(env, values.data(), values.size());
}

Napi::Float32Array ToFloat32Array(Napi::Env env, const std::vector<float>& values) {
  return ToFloat32Array(env, values.data(), values.size());
}

Napi::Array ToIntList(Napi::Env env, const std::vector<int>& values) {
  Napi::Array out = Napi::Array::New(env, values.size());
  for (size_t i = 0; i < values.size(); ++i) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, values[i]));
  return out;
}

Napi::Array ToNumberList(Napi::Env env, const std::vector<double>& values) {
  Napi::Array out = Napi::Array::New(env, values.size());
  for (size_t i = 0; i < values.size(); ++i) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, values[i]));
  return out;
}

Napi::Object LayerMapToJs(Napi::Env env, const std::map<int, std::vector<float>>& m) {
  Napi::Object o = Napi::Object::New(env);
  for (const auto& [layer, values] : m) o.Set(std::to_string(layer), ToFloat32Array(env, values));
  return o;
}

Napi::Object InfoToJs(Napi::Env env, const ModelInfo& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("modelType", m.model_type);
  o.Set("dir", m.dir);
  o.Set("numLayers", m.num_layers);
  o.Set("hiddenSize", m.hidden_size);
  o.Set("numHeads", m.num_heads);
  o.Set("numKvHeads", m.num_kv_heads);
  o.Set("headDim", m.head_dim);
  o.Set("vocabSize", m.vocab_size);
  o.Set("numExperts", m.num_experts);
  o.Set("topK", m.top_k);
  o.Set("expertWidth", m.expert_width);
  o.Set("sharedExpertWidth", m.shared_expert_width);
  o.Set("normTopkProb", m.norm_topk_prob);
  o.Set("routingRule", m.routing_rule);
  o.Set("routerScoring", m.router_scoring);
  o.Set("maxPositionEmbeddings", m.max_position_embeddings);
  o.Set("moeLayers", ToIntList(env, m.moe_layers));
  o.Set("dtype", m.dtype);
  o.Set("expertLayout", m.expert_layout);
  o.Set("shards", m.shards);
  o.Set("parameters", static_cast<double>(m.parameters));
  o.Set("activeParameters", static_cast<double>(m.active_parameters));
  o.Set("weightBytes", static_cast<double>(m.weight_bytes));
  o.Set("eosTokenIds", ToIntList(env, m.eos_token_ids));
  Napi::Array warnings = Napi::Array::New(env, m.warnings.size());
  for (size_t i = 0; i < m.warnings.size(); ++i) warnings.Set(static_cast<uint32_t>(i), m.warnings[i]);
  o.Set("warnings", warnings);
  o.Set("backend", m.backend);
  o.Set("threads", m.threads);
  o.Set("activations", m.activations);
  o.Set("weights", m.weights);
  o.Set("kvCache", m.kv_cache);
  return o;
}

Napi::Object RoutingToJs(Napi::Env env, const LayerRouting& span, Napi::Float32Array router_logits,
                         Napi::Int32Array experts, Napi::Float32Array weights) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("layer", span.layer);
  o.Set("start", span.start);
  o.Set("count", span.count);
  o.Set("numExperts", span.num_experts);
  o.Set("topK", span.top_k);
  o.Set("routerLogits", router_logits);
  o.Set("experts", experts);
  o.Set("weights", weights);
  return o;
}

Napi::Object RoutingToJs(Napi::Env env, const LayerRouting& r) {
  const size_t logits = static_cast<size_t>(r.count) * r.num_experts, picks = static_cast<size_t>(r.count) * r.top_k;
  return RoutingToJs(env, r, ToFloat32Array(env, r.router_logits, r.router_logits ? logits : 0),
                     ToInt32Array(env, r.experts, r.experts ? picks : 0),
                     ToFloat32Array(env, r.weights, r.weights ? picks : 0));
}

Napi::Object RoundToJs(Napi::Env env, const RerouteRound& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("position", r.position);
  o.Set("windowStart", r.window_start);
  o.Set("layers", ToIntList(env, r.layers));
  o.Set("losses", ToNumberList(env, r.losses));
  Napi::Object confidence = Napi::Object::New(env);
  for (const auto& [layer, c] : r.confidence) confidence.Set(std::to_string(layer), Napi::Number::New(env, c));
  o.Set("confidence", confidence);
  o.Set("delta", LayerMapToJs(env, r.delta));
  return o;
}

Napi::Object RerouteResultToJs(Napi::Env env, const RerouteResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("tokens", ToInt32Array(env, r.tokens));
  Napi::Array rounds = Napi::Array::New(env, r.rounds.size());
  for (size_t i = 0; i < r.rounds.size(); ++i) rounds.Set(static_cast<uint32_t>(i), RoundToJs(env, r.rounds[i]));
  o.Set("rounds", rounds);
  o.Set("delta", LayerMapToJs(env, r.delta));
  return o;
}

Napi::Object C3poResultToJs(Napi::Env env, const C3poResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("omegaBefore", LayerMapToJs(env, r.omega_before));
  o.Set("omegaAfter", LayerMapToJs(env, r.omega_after));
  Napi::Object core = Napi::Object::New(env);
  for (const auto& [layer, experts] : r.core) core.Set(std::to_string(layer), ToInt32Array(env, experts));
  o.Set("core", core);
  o.Set("losses", ToNumberList(env, r.losses));
  o.Set("firstGrad", LayerMapToJs(env, r.first_grad));
  return o;
}

namespace {
Napi::Object ChangeToJs(Napi::Env env, const HeadroomChange& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("layer", c.layer);
  o.Set("flipped", c.flipped);
  o.Set("margin", c.margin);
  o.Set("answer", c.answer);
  Napi::Array swaps = Napi::Array::New(env, c.swaps.size());
  for (size_t i = 0; i < c.swaps.size(); ++i) {
    Napi::Object s = Napi::Object::New(env);
    s.Set("layer", c.swaps[i].layer);
    s.Set("out", c.swaps[i].out);
    s.Set("in", c.swaps[i].in);
    swaps.Set(static_cast<uint32_t>(i), s);
  }
  o.Set("swaps", swaps);
  o.Set("gradient", c.gradient);
  o.Set("omega", LayerMapToJs(env, c.omega));
  o.Set("evaluations", c.evaluations);
  return o;
}
}  // namespace

Napi::Object HeadroomResultToJs(Napi::Env env, const HeadroomResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("margin", r.margin);
  o.Set("answer", r.answer);
  o.Set("correct", r.correct);
  Napi::Array layers = Napi::Array::New(env, r.layers.size());
  for (size_t i = 0; i < r.layers.size(); ++i) layers.Set(static_cast<uint32_t>(i), ChangeToJs(env, r.layers[i]));
  o.Set("layers", layers);
  if (r.joint.evaluations > 0) o.Set("joint", ChangeToJs(env, r.joint));  // searched (every search runs at least one routing)
  return o;
}

}  // namespace routescope::binding
