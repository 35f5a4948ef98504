// Conversions between JS values and the engine's types: coded errors, arguments and options in, results out.
// Argument checks here are about JS types (an integer, an Int32Array, an object); value rules are the engine's.
#pragma once
#include <napi.h>

#include <exception>
#include <map>
#include <string>
#include <vector>

#include "routescope/adapt.h"
#include "routescope/engine.h"

namespace routescope::binding {

// Every error reaching JS is an Error with a string `code` (the engine's Error codes, OOM, INTERNAL, BAD_ARGUMENT,
// BUSY, CLOSED).
struct CodedError {
  std::string code;
  std::string message;
};
Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message);
[[noreturn]] void Throw(Napi::Env env, const std::string& code, const std::string& message);
// Whatever the engine threw as a code and a message; never lets an exception through.
CodedError Classify(std::exception_ptr eptr);
// A JS error for a caught exception: JS errors as they are, everything else classified.
Napi::Error ToJsError(Napi::Env env, std::exception_ptr eptr);
// A promise already rejected with ToJsError(eptr): asynchronous calls report argument errors this way, not by throwing.
Napi::Promise RejectedPromise(Napi::Env env, std::exception_ptr eptr);

// Runs a synchronous JS-facing body; engine exceptions become coded JS errors.
template <typename F>
auto Guard(Napi::Env env, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;  // already a JS error (argument checks, JS exceptions)
  } catch (...) {
    throw ToJsError(env, std::current_exception());
  }
}

// Arguments and options in. `what` / `key` name the argument in the error.
std::vector<int> ReadIntArray(Napi::Env env, const Napi::Value& value, const char* what);
std::vector<float> ReadFloatArray(Napi::Env env, const Napi::Value& value, const char* what);
// A positional argument that must be a non-negative 32-bit integer, e.g. what = "meanHidden(tokens, layer): layer".
int NonNegativeInt(Napi::Env env, const Napi::Value& value, const std::string& what);
Napi::Object OptionsObject(Napi::Env env, const Napi::CallbackInfo& info, size_t index, bool required);
bool Has(const Napi::Object& obj, const char* key);  // present and neither undefined nor null
bool BoolOption(Napi::Env env, const Napi::Object& obj, const char* key, bool fallback);
double NumberOption(Napi::Env env, const Napi::Object& obj, const char* key, double fallback);
int IntOption(Napi::Env env, const Napi::Object& obj, const char* key, int fallback);
std::string StringOption(Napi::Env env, const Napi::Object& obj, const char* key, const std::string& fallback);
Napi::Function CallbackOption(Napi::Env env, const Napi::Object& obj, const char* key);  // empty when absent
// {"<layer>": values} (c3poNgd's omegaInit).
std::map<int, std::vector<float>> ReadLayerMap(Napi::Env env, const Napi::Value& value, const char* what);
// maxNewTokens, temperature, topP, seed, stopTokens of generate() and generateRerouted().
SampleOptions ReadSampleOptions(Napi::Env env, const Napi::Object& options);
RerouteOptions ReadRerouteOptions(Napi::Env env, const Napi::Object& options);
// The JSON of option `patch`, parsed and validated against the model; empty when absent.
Patch ReadPatch(Napi::Env env, const Napi::Object& options, const ModelInfo& info);

// Results out.
Napi::Int32Array ToInt32Array(Napi::Env env, const int32_t* values, size_t count);
Napi::Float32Array ToFloat32Array(Napi::Env env, const float* values, size_t count);
Napi::Int32Array ToInt32Array(Napi::Env env, const std::vector<int>& values);
Napi::Float32Array ToFloat32Array(Napi::Env env, const std::vector<float>& values);
Napi::Array ToIntList(Napi::Env env, const std::vector<int>& values);
Napi::Array ToNumberList(Napi::Env env, const std::vector<double>& values);
// {"<layer>": Float32Array} from a per-layer map (router-bias gradients, rerouting delta, C3PO omegas).
Napi::Object LayerMapToJs(Napi::Env env, const std::map<int, std::vector<float>>& m);
Napi::Object InfoToJs(Napi::Env env, const ModelInfo& m);
// One layer's routing as onLayer receives it, around typed arrays JS already owns (span gives the shape).
Napi::Object RoutingToJs(Napi::Env env, const LayerRouting& span, Napi::Float32Array router_logits,
                         Napi::Int32Array experts, Napi::Float32Array weights);
// The same, each array copied once from the engine's buffers into the typed array JS receives.
Napi::Object RoutingToJs(Napi::Env env, const LayerRouting& r);
Napi::Object RoundToJs(Napi::Env env, const RerouteRound& r);
Napi::Object RerouteResultToJs(Napi::Env env, const RerouteResult& r);
Napi::Object C3poResultToJs(Napi::Env env, const C3poResult& r);
Napi::Object HeadroomResultToJs(Napi::Env env, const HeadroomResult& r);

}  // namespace routescope::binding
