#include "weights/dtype.h"

#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::weights {
namespace {

using ::testing::HasSubstr;

struct Expected {
  DType dtype;
  const char* name;
  const char* torch_name;
  uint64_t size;
};

constexpr Expected kAll[] = {
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
};

TEST(DTypeTest, NamesSizesAndBothSpellingsParse) {
  for (const Expected& e : kAll) {
    SCOPED_TRACE(e.name);
    EXPECT_EQ(DTypeName(e.dtype), e.name);
    EXPECT_EQ(DTypeTorchName(e.dtype), e.torch_name);
    EXPECT_EQ(DTypeSize(e.dtype), e.size);
    ASSERT_TRUE(ParseDType(e.name).ok());
    EXPECT_EQ(*ParseDType(e.name), e.dtype);
    ASSERT_TRUE(ParseDType(e.torch_name).ok());
    EXPECT_EQ(*ParseDType(e.torch_name), e.dtype);
  }
}

// The table itself: every row round-trips through both parsers and the accessors, no name is
// repeated, and every enum value has exactly one row, in order.
TEST(DTypeTest, EveryTableEntryRoundTrips) {
  std::set<std::string_view> names;
  size_t i = 0;
  for (const DTypeInfo& e : AllDTypes()) {
    SCOPED_TRACE(e.name);
    EXPECT_EQ(static_cast<size_t>(e.dtype), i++);
    EXPECT_TRUE(names.insert(e.name).second);
    EXPECT_TRUE(names.insert(e.torch_name).second);
    EXPECT_EQ(DTypeName(e.dtype), e.name);
    EXPECT_EQ(DTypeTorchName(e.dtype), e.torch_name);
    EXPECT_EQ(DTypeSize(e.dtype), e.size);
    EXPECT_THAT(e.size, ::testing::AnyOf(1u, 2u, 4u, 8u));
    EXPECT_TRUE(e.torch_name.starts_with("torch."));
    ASSERT_TRUE(ParseDType(e.name).ok());
    EXPECT_EQ(*ParseDType(e.name), e.dtype);
    ASSERT_TRUE(ParseDType(e.torch_name).ok());
    EXPECT_EQ(*ParseDType(e.torch_name), e.dtype);
    ASSERT_TRUE(ParseDTypeName(e.name).ok());
    EXPECT_EQ(*ParseDTypeName(e.name), e.dtype);
    // The safetensors-only parser refuses the torch spelling.
    StatusOr<DType> torch = ParseDTypeName(e.torch_name);
    ASSERT_FALSE(torch.ok());
    EXPECT_EQ(torch.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(torch.status().message()),
                HasSubstr(absl::StrCat("unknown dtype \"", std::string(e.torch_name),
                                       "\"; valid dtypes: BOOL")));
  }
  EXPECT_EQ(i, std::size(kAll));
  EXPECT_EQ(static_cast<size_t>(DType::kC64) + 1, AllDTypes().size());
}

TEST(DTypeTest, UnknownNameListsTheValidOnes) {
  for (const char* bad : {"bf16", "torch.bf16", "F4", "", "BF16 "}) {
    SCOPED_TRACE(bad);
    StatusOr<DType> d = ParseDType(bad);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(d.status().message()),
                HasSubstr(std::string("unknown dtype \"") + bad +
                          "\"; valid dtypes: BOOL, U8, "
                          "I8, F8_E4M3, F8_E5M2, F8_E8M0, U16, I16, F16, BF16, U32, I32, F32, "
                          "U64, I64, F64, C64"));
  }
}

}  // namespace
}  // namespace ferry::weights
