// libFuzzer harness: checkpoint loading from a model folder whose config.json (and optionally
// generation_config.json and model.safetensors.index.json) come from the input, over the weights of a parity
// fixture. Input: one byte choosing the fixture (among those of the config's model_type, so that an input keeps its
// fixture when fixtures of other architectures are added), then the files separated by 0xFF bytes (never in JSON).
// A folder that loads is run: a forward pass of three tokens must finish without a sanitizer report.
// Fixtures are read from $ROUTESCOPE_FIXTURES (default test/fixtures) and copied once into a private folder.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "routescope/engine.h"
#include "util/json.h"

namespace fs = std::filesystem;
using namespace routescope;

namespace {
struct Fixture {
  fs::path dir;
  bool sharded = false;
  std::string model_type;
};
std::vector<Fixture> g_fixtures;

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

std::string read_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string model_type_of(const std::string& config) {
  try {
    const Json root = Json::parse(config);
    const Json* t = root.is_object() ? root.find("model_type") : nullptr;
    return t && t->is_string() ? t->as_string() : std::string();
  } catch (const std::exception&) {
    return std::string();
  }
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* env = std::getenv("ROUTESCOPE_FIXTURES");
  const fs::path parity = fs::path(env && *env ? env : "test/fixtures") / "parity";
  const fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
  const fs::path root = base / ("routescope-config-fuzz-" + std::to_string(::getpid()));
  std::vector<fs::path> names;
  for (const auto& d : fs::directory_iterator(parity))
    if (fs::exists(d.path() / "model" / "config.json")) names.push_back(d.path());
  std::sort(names.begin(), names.end());
  for (const auto& src : names) {
    Fixture f;
    f.dir = root / src.filename();
    fs::create_directories(f.dir);
    for (const auto& file : fs::directory_iterator(src / "model")) fs::copy(file.path(), f.dir / file.path().filename());
    f.sharded = fs::exists(f.dir / "model.safetensors.index.json");
    f.model_type = model_type_of(read_file(f.dir / "config.json"));
    g_fixtures.push_back(f);
  }
  if (g_fixtures.empty()) {
    std::fprintf(stderr, "config_fuzz: no fixtures under %s (set ROUTESCOPE_FIXTURES)\n", parity.c_str());
    std::abort();
  }
  std::atexit([] {
    std::error_code ec;
    if (!g_fixtures.empty()) fs::remove_all(g_fixtures[0].dir.parent_path(), ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::vector<std::string> parts(1);
  for (size_t i = 1; i < size; ++i) {
    if (data[i] == 0xFF) parts.emplace_back();
    else parts.back() += static_cast<char>(data[i]);
  }
  std::vector<const Fixture*> same;
  const std::string type = model_type_of(parts[0]);
  for (const Fixture& f : g_fixtures)
    if (f.model_type == type) same.push_back(&f);
  if (same.empty())
    for (const Fixture& f : g_fixtures) same.push_back(&f);
  const Fixture& fx = *same[data[0] % same.size()];
  static std::string original_index;
  write_file(fx.dir / "config.json", parts[0]);
  if (parts.size() > 1) write_file(fx.dir / "generation_config.json", parts[1]);
  else fs::remove(fx.dir / "generation_config.json");
  // The index of a sharded fixture: from the input when given, else its own (kept aside on first use).
  const fs::path index = fx.dir / "model.safetensors.index.json";
  const fs::path saved = fx.dir / "index.original";
  if (fx.sharded) {
    if (!fs::exists(saved)) fs::copy(index, saved);
    if (parts.size() > 2) write_file(index, parts[2]);
    else fs::copy(saved, index, fs::copy_options::overwrite_existing);
  }
  try {
    auto model = Model::load(fx.dir.string(), LoadOptions{1, "cpu"});
    const ModelInfo& info = model->info();
    auto session = model->create_session(4);
    session->forward({0, 1 % info.vocab_size, info.vocab_size - 1}, Patch{}, LogitsMode::Last);
  } catch (const Error&) {
  }
  return 0;
}
