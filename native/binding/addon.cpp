// Node-API binding: a thin layer over routescope/engine.h and routescope/adapt.h that extension/src/engine/native.ts
// mirrors. It only converts: JS values to engine types and back (convert.*), engine calls to promises on worker
// threads (call.*), engine objects to JS classes (wrap.h: model.cpp, session.cpp). This file is the module entry.
#include <napi.h>

#include "wrap.h"

namespace routescope::binding {
namespace {

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsString()) Throw(env, "BAD_ARGUMENT", "loadModel(dir): dir must be a string");
    const std::string dir = info[0].As<Napi::String>().Utf8Value();
    Napi::Object options = OptionsObject(env, info, 1, false);
    LoadOptions load;
    load.threads = IntOption(env, options, "threads", 0);
    load.backend = StringOption(env, options, "backend", "auto");
    load.activations = StringOption(env, options, "activations", "fp32");
    load.weights = StringOption(env, options, "weights", "auto");
    load.kv_cache = StringOption(env, options, "kvCache", "fp32");
    std::unique_ptr<Model> model = Model::load(dir, load);
    if (!model) Throw(env, "INTERNAL", "internal error: the engine returned no model for " + dir);
    return ModelWrap::New(env, std::move(model));
  });
}

}  // namespace

Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->model_class = Napi::Persistent(ModelWrap::Define(env));
  data->session_class = Napi::Persistent(SessionWrap::Define(env));
  data->prefix_class = Napi::Persistent(PrefixWrap::Define(env));
  env.SetInstanceData(data);
  exports.Set("version", Napi::String::New(env, "0.1.0"));
#ifdef RS_WITH_CUDA
  exports.Set("cudaCompiled", Napi::Boolean::New(env, true));
#else
  exports.Set("cudaCompiled", Napi::Boolean::New(env, false));
#endif
  exports.Set("loadModel", Napi::Function::New<LoadModel>(env, "loadModel"));
  return exports;
}

}  // namespace routescope::binding

using routescope::binding::InitAddon;  // the macro pastes the name: it must be unqualified
NODE_API_MODULE(routescope, InitAddon)
