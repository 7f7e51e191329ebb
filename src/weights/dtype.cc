#include "weights/dtype.h"

#include <array>

#include "absl/strings/str_cat.h"

namespace ferry::weights {
namespace {

// Indexed by the enum's value; the order of the enum.
constexpr std::array<DTypeInfo, 17> kDTypes = {{
    {DType::kBool, "BOOL", "torch.bool", 1},
    {DType::kU8, "U8", "torch.uint8", 1},
    {DType::kI8, "I8", "torch.int8", 1},
    {DType::kF8E4M3, "F8_E4M3", "torch.float8_e4m3fn", 1},
    {DType::kF8E5M2, "F8_E5M2", "torch.float8_e5m2", 1},
    {DType::kF8E8M0, "F8_E8M0", "torch.float8_e8m0fnu", 1},
    {DType::kU16, "U16", "torch.uint16", 2},
    {DType::kI16, "I16", "torch.int16", 2},
    {DType::kF16, "F16", "torch.float16", 2},
    {DType::kBF16, "BF16", "torch.bfloat16", 2},
    {DType::kU32, "U32", "torch.uint32", 4},
    {DType::kI32, "I32", "torch.int32", 4},
    {DType::kF32, "F32", "torch.float32", 4},
    {DType::kU64, "U64", "torch.uint64", 8},
    {DType::kI64, "I64", "torch.int64", 8},
    {DType::kF64, "F64", "torch.float64", 8},
    {DType::kC64, "C64", "torch.complex64", 8},
}};

constexpr bool TableFollowsEnumOrder() {
  for (size_t i = 0; i < kDTypes.size(); ++i) {
    if (static_cast<size_t>(kDTypes[i].dtype) != i) return false;
  }
  return true;
}
static_assert(TableFollowsEnumOrder(), "kDTypes must list DType values in enum order");

const DTypeInfo& Entry(DType dtype) { return kDTypes[static_cast<size_t>(dtype)]; }

}  // namespace

std::span<const DTypeInfo> AllDTypes() { return kDTypes; }

uint64_t DTypeSize(DType dtype) { return Entry(dtype).size; }

std::string_view DTypeName(DType dtype) { return Entry(dtype).name; }

std::string_view DTypeTorchName(DType dtype) { return Entry(dtype).torch_name; }

StatusOr<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& e : kDTypes) {
    if (name == e.name || name == e.torch_name) return e.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype \"", std::string(name),
                                                 "\"; valid dtypes: ", ValidDTypeNames(),
                                                 " (or their torch.* names)"));
}

StatusOr<DType> ParseDTypeName(std::string_view name) {
  for (const DTypeInfo& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype \"", std::string(name), "\"; valid dtypes: ", ValidDTypeNames()));
}

std::string ValidDTypeNames() {
  std::string out;
  for (const DTypeInfo& e : kDTypes) {
    if (!out.empty()) out += ", ";
    out += std::string(e.name);
  }
  return out;
}

}  // namespace ferry::weights
