// A small JSON reader for config.json, safetensors headers, patches and test fixtures.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace routescope {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };
  Json() = default;
  static Json parse(const std::string& text);  // throws std::runtime_error("... at offset N")

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  bool as_bool() const { return bool_; }
  double as_number() const { return number_; }
  // Integer view of a number; false when it is not an exact integer in range.
  bool as_int64(int64_t& out) const;
  const std::string& as_string() const { return string_; }
  const std::vector<Json>& items() const { return array_; }
  // Object members in file order (duplicate keys are rejected by the parser).
  const std::vector<std::pair<std::string, Json>>& members() const { return object_; }
  const Json* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  const std::string& raw_number() const { return string_; }
  // Compact JSON text; numbers keep their original spelling.
  std::string dump() const;

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;  // also the literal text of a number
  std::vector<Json> array_;
  std::vector<std::pair<std::string, Json>> object_;
};

}  // namespace routescope
