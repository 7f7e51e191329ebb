// Element types of safetensors files, under both spellings that ferry meets: the safetensors
// header name ("BF16") and the PyTorch name that ModelExpress's TensorDescriptor.dtype carries
// (`str(torch.bfloat16)` == "torch.bfloat16").
//
// This is ferry's one dtype table: the safetensors parser, the worker endpoint (which answers
// with torch names), the pull flows and the Python module (`ferry._ferry.dtypes()`, from which
// ferry.torch builds its torch mapping) all read it. A dtype is either in it, and then works end
// to end, or refused where it is first parsed.
//
// Only whole-byte types are supported; the sub-byte types newer safetensors versions define
// (F4, F6_E2M3, F6_E3M2) are rejected as unknown.
#ifndef FERRY_WEIGHTS_DTYPE_H_
#define FERRY_WEIGHTS_DTYPE_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "ferry/status.h"

namespace ferry::weights {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kF8E4M3,
  kF8E5M2,
  kF8E8M0,
  kU16,
  kI16,
  kF16,
  kBF16,
  kU32,
  kI32,
  kF32,
  kU64,
  kI64,
  kF64,
  kC64,
};

// One row of the table.
struct DTypeInfo {
  DType dtype;
  std::string_view name;        // safetensors spelling: "BF16"
  std::string_view torch_name;  // str(torch dtype): "torch.bfloat16"
  uint64_t size;                // bytes per element
};

// Every supported dtype, in the enum's order.
std::span<const DTypeInfo> AllDTypes();

// Bytes per element: 1, 2, 4 or 8.
uint64_t DTypeSize(DType dtype);

// The safetensors header spelling, e.g. "BF16", "F8_E4M3".
std::string_view DTypeName(DType dtype);

// The PyTorch spelling, e.g. "torch.bfloat16", "torch.float8_e4m3fn".
std::string_view DTypeTorchName(DType dtype);

// Accepts either spelling (exact, case-sensitive). On failure returns InvalidArgument naming
// `name` and listing the valid safetensors names.
StatusOr<DType> ParseDType(std::string_view name);

// Accepts the safetensors spelling only ("BF16", not "torch.bfloat16"), as a safetensors header
// and ferry's TensorEntry.dtype carry it. Same error as ParseDType.
StatusOr<DType> ParseDTypeName(std::string_view name);

// "BOOL, U8, I8, ..." : the valid safetensors names, for error messages.
std::string ValidDTypeNames();

}  // namespace ferry::weights

#endif  // FERRY_WEIGHTS_DTYPE_H_
