#include "weights/safetensors.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::weights {
namespace {

using ::ferry::testing::TempDir;
using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// Names in `dir` other than `keep`.
std::vector<std::string> OtherFiles(const std::string& dir, const std::string& keep) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename() != keep) out.push_back(e.path().filename().string());
  }
  return out;
}

std::vector<TensorInfo> SampleTensors() {
  return {
      {"model.embed_tokens.weight", DType::kBF16, {4, 3}, 0, 24},
      {"empty", DType::kF32, {0, 7}, 24, 0},
      {"scalar", DType::kI64, {}, 24, 8},
      {"bias", DType::kF16, {5}, 32, 10},
  };
}

std::string SampleData() {
  std::string data(42, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 1);
  return data;
}

TEST(SafetensorsTest, WriteThenReadRoundTripsExactBytes) {
  TempDir dir;
  const std::string path = dir.path() + "/model.safetensors";
  const std::vector<TensorInfo> tensors = SampleTensors();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "h\xc3\xa9"}};
  const std::string data = SampleData();
  ASSERT_TRUE(WriteSafetensorsAtomic(path, tensors, metadata, data.data(), data.size()).ok());

  // The file is exactly the encoded header followed by the data.
  const std::string header = EncodeSafetensorsHeader(tensors, metadata);
  EXPECT_EQ(ReadFile(path), header + data);
  EXPECT_EQ(header.size() % 8, 0u);
  EXPECT_TRUE(OtherFiles(dir.path(), "model.safetensors").empty());

  StatusOr<SafetensorsLayout> layout = ReadSafetensorsLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->data_offset, header.size());
  EXPECT_EQ(layout->data_size, data.size());
  EXPECT_EQ(layout->metadata, metadata);
  // Sorted by offset; the empty tensor sorts before the scalar at the same offset.
  ASSERT_EQ(layout->tensors.size(), 4u);
  EXPECT_EQ(layout->tensors[0], tensors[0]);
  EXPECT_EQ(layout->tensors[1], tensors[1]);
  EXPECT_EQ(layout->tensors[2], tensors[2]);
  EXPECT_EQ(layout->tensors[3], tensors[3]);

  std::string read(data.size(), 'x');
  ASSERT_TRUE(ReadSafetensorsData(path, *layout, read.data(), read.size()).ok());
  EXPECT_EQ(read, data);
}

// A header may name every dtype of the table (F8_E8M0 and C64 included): what the parser
// accepts here, the worker endpoint serves (worker_state_test) and ferry publish/pull moves
// (tests/integration/p2p_pull_test).
TEST(SafetensorsTest, EveryDTypeOfTheTableRoundTrips) {
  TempDir dir;
  const std::string path = dir.path() + "/all.safetensors";
  std::vector<TensorInfo> tensors;
  uint64_t offset = 0;
  for (const DTypeInfo& d : AllDTypes()) {
    tensors.push_back({absl::StrCat("t.", std::string(d.name)), d.dtype, {3}, offset, 3 * d.size});
    offset += 3 * d.size;
  }
  std::string data(offset, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 13 + 5);
  ASSERT_TRUE(WriteSafetensorsAtomic(path, tensors, {}, data.data(), data.size()).ok());
  StatusOr<SafetensorsLayout> layout = ReadSafetensorsLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->tensors, tensors);
}

TEST(SafetensorsTest, EncodedHeaderIsLengthPrefixedSpacePaddedJson) {
  const std::string encoded =
      EncodeSafetensorsHeader({{"a", DType::kU8, {3}, 0, 3}}, {{"format", "pt"}});
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})";
  const std::string padding((8 - json.size() % 8) % 8, ' ');
  EXPECT_EQ(encoded, LengthPrefix(json.size() + padding.size()) + json + padding);
  // No metadata: no __metadata__ key.
  EXPECT_EQ(EncodeSafetensorsHeader({}, {}), LengthPrefix(8) + "{}      ");
}

TEST(SafetensorsTest, ParsesAHandWrittenHeader) {
  StatusOr<SafetensorsLayout> layout = ParseSafetensorsHeader(
      R"( {"b": {"shape": [2], "dtype": "F8_E4M3", "data_offsets": [4, 6]},
          "a": {"dtype": "U16", "data_offsets": [0, 4], "shape": [1, 2]}}   )",
      6, "x.safetensors");
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->tensors.size(), 2u);
  EXPECT_EQ(layout->tensors[0], (TensorInfo{"a", DType::kU16, {1, 2}, 0, 4}));
  EXPECT_EQ(layout->tensors[1], (TensorInfo{"b", DType::kF8E4M3, {2}, 4, 2}));
  EXPECT_TRUE(layout->metadata.empty());
}

struct BadHeader {
  const char* label;
  std::string json;
  uint64_t data_size;
  std::string message;
};

TEST(SafetensorsTest, RejectsInvalidHeadersNamingTheFileAndTheProblem) {
  const std::string ok_a = R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]})";
  const BadHeader cases[] = {
      {"not an object", "[1, 2]", 0, "the header must be a JSON object, got an array"},
      {"empty", "", 0, "header is not valid JSON"},
      {"truncated json", R"({"a": {"dtype": "U8")", 0, "header is not valid JSON"},
      {"trailing garbage", "{} x", 0, "header is not valid JSON"},
      {"invalid utf-8", "{\"\xff\":{}}", 0, "header is not valid JSON"},
      {"tensor not object", R"({"a": "U8"})", 0,
       "tensor \"a\" must be an object with dtype, shape and data_offsets, got a string"},
      {"dtype not string", R"({"a":{"dtype":7,"shape":[],"data_offsets":[0,1]}})", 1,
       "tensor \"a\": dtype must be a string, got a number"},
      {"shape not array", R"({"a":{"dtype":"U8","shape":"4","data_offsets":[0,4]}})", 4,
       "tensor \"a\": shape must be an array of non-negative integers, got a string"},
      {"negative dim", R"({"a":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", 4,
       "shape must be an array of non-negative integers, got a negative number"},
      {"fractional dim", R"({"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,4]}})", 4,
       "shape must be an array of non-negative integers, got the number \"1.5\""},
      {"nested shape", R"({"a":{"dtype":"U8","shape":[[4]],"data_offsets":[0,4]}})", 4,
       "shape must be an array of non-negative integers, got an array"},
      {"offsets too short", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4]}})", 4,
       "tensor \"a\": data_offsets has 1 entries; it must be [begin, end]"},
      {"offsets too long", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4,4]}})", 4,
       "tensor \"a\": data_offsets has more than 2 entries"},
      {"offsets not array", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":null}})", 4,
       "data_offsets must be an array of two non-negative integers, got null"},
      {"unknown field", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":1}})", 4,
       "tensor \"a\": unknown field \"x\" (expected dtype, shape and data_offsets)"},
      {"missing field", R"({"a":{"dtype":"U8","shape":[4]}})", 4,
       "tensor \"a\": missing field \"data_offsets\""},
      {"duplicate field", R"({"a":{"dtype":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
       4, "tensor \"a\": duplicate field \"dtype\""},
      {"unknown dtype", R"({"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}})", 4,
       "tensor \"a\": unknown dtype \"Q4\"; valid dtypes: BOOL, U8, I8, F8_E4M3"},
      {"torch dtype spelling", R"({"a":{"dtype":"torch.uint8","shape":[4],"data_offsets":[0,4]}})",
       4, "unknown dtype \"torch.uint8\""},
      {"element overflow",
       R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4,
       "tensor \"a\": shape [4294967296, 4294967296] has more than 2^64 elements"},
      {"byte overflow",
       R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,4]}})", 4,
       "tensor \"a\": shape [4611686018427387904] of F64 is more than 2^64 bytes"},
      {"size mismatch", R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,3]}})", 3,
       "tensor \"a\": data_offsets [0, 3] span 3 bytes but shape [2] of BF16 needs 4 bytes"},
      {"begin after end", R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[4,2]}})", 4,
       "tensor \"a\": data_offsets [4, 2] begin after end"},
      {"past data end", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 3,
       "tensor \"a\": data_offsets [0, 4] end past the data section's 3 bytes"},
      {"overlap", "{" + ok_a + R"(,"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})", 5,
       "tensors \"a\" [0, 4) and \"b\" [3, 5) overlap"},
      {"empty inside another",
       "{" + ok_a + R"(,"b":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}})", 4,
       "tensors \"a\" [0, 4) and \"b\" [2, 2) overlap"},
      {"hole", R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", 4,
       "data section bytes [0, 2) belong to no tensor (a hole before \"a\")"},
      {"trailing bytes", "{" + ok_a + "}", 6,
       "data section bytes [4, 6) after the last tensor belong to no tensor"},
      {"nothing but data", "{}", 1, "data section bytes [0, 1) after the last tensor"},
      {"duplicate name", "{" + ok_a + "," + ok_a + "}", 4, "duplicate tensor name \"a\""},
      {"empty name", R"({"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})", 0,
       "empty tensor name"},
      {"metadata not object", R"({"__metadata__":[]})", 0,
       "__metadata__ must be an object of strings, got an array"},
      {"metadata value not string", R"({"__metadata__":{"k":1}})", 0,
       "__metadata__ value for key \"k\" must be a string, got a number"},
      {"duplicate metadata key", R"({"__metadata__":{"k":"1","k":"2"}})", 0,
       "duplicate __metadata__ key \"k\""},
      {"duplicate metadata", R"({"__metadata__":{},"__metadata__":{}})", 0,
       "duplicate __metadata__"},
  };
  for (const BadHeader& c : cases) {
    SCOPED_TRACE(c.label);
    StatusOr<SafetensorsLayout> layout = ParseSafetensorsHeader(c.json, c.data_size, "m.st");
    ASSERT_FALSE(layout.ok());
    EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(layout.status().message()), HasSubstr("safetensors file m.st: "));
    EXPECT_THAT(std::string(layout.status().message()), HasSubstr(c.message));
    EXPECT_THAT(std::string(layout.status().message()),
                HasSubstr("; re-create or re-download the file"));
  }
}

TEST(SafetensorsTest, LongNamesAreElidedInMessages) {
  const std::string name(1000, 'n');
  StatusOr<SafetensorsLayout> layout = ParseSafetensorsHeader("{\"" + name + "\": 1}", 0, "m.st");
  ASSERT_FALSE(layout.ok());
  EXPECT_THAT(std::string(layout.status().message()),
              HasSubstr("tensor \"" + name.substr(0, 120) + "...\" (1000 bytes) must be"));
}

TEST(SafetensorsTest, RejectsMoreThanAMillionTensors) {
  std::string json = "{";
  for (uint64_t i = 0; i <= kMaxSafetensorsTensors; ++i) {
    absl::StrAppend(&json, i == 0 ? "" : ",", "\"", i, R"(":{"dtype":"U8","shape":[0],)",
                    R"("data_offsets":[0,0]})");
  }
  json += "}";
  ASSERT_LT(json.size(), kMaxSafetensorsHeaderBytes);
  StatusOr<SafetensorsLayout> layout = ParseSafetensorsHeader(json, 0, "many.st");
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(layout.status().message()),
              HasSubstr("safetensors file many.st: more than 1000000 tensors"));
}

TEST(SafetensorsTest, RejectsHeaderOverTheLimit) {
  const std::string json(kMaxSafetensorsHeaderBytes + 1, ' ');
  StatusOr<SafetensorsLayout> layout = ParseSafetensorsHeader(json, 0, "big.st");
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(layout.status().message()),
              HasSubstr("safetensors file big.st: header is 104857601 bytes, over the "
                        "104857600-byte (100 MiB) limit"));
}

class SafetensorsFileTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) { return dir_.path() + "/" + name; }

  // Writes the sample model and returns its path.
  std::string WriteSample() {
    const std::string path = Path("sample.safetensors");
    const std::string data = SampleData();
    EXPECT_TRUE(WriteSafetensorsAtomic(path, SampleTensors(), {}, data.data(), data.size()).ok());
    return path;
  }

  void ExpectError(const Status& status, absl::StatusCode code, const std::string& substring) {
    EXPECT_EQ(status.code(), code) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(substring));
  }

  TempDir dir_;
};

TEST_F(SafetensorsFileTest, MissingFileIsNotFound) {
  const std::string path = Path("absent.safetensors");
  ExpectError(ReadSafetensorsLayout(path).status(), absl::StatusCode::kNotFound,
              "opening safetensors file " + path +
                  " failed (check the path and its "
                  "permissions): No such file or directory");
}

TEST_F(SafetensorsFileTest, ShortFileIsDataLoss) {
  const std::string path = Path("short.safetensors");
  WriteFile(path, "abc");
  ExpectError(ReadSafetensorsLayout(path).status(), absl::StatusCode::kDataLoss,
              "safetensors file " + path + " is 3 bytes, too short for the 8-byte header length");
}

TEST_F(SafetensorsFileTest, HeaderLengthOverLimitIsInvalid) {
  const std::string path = Path("huge.safetensors");
  WriteFile(path, LengthPrefix(kMaxSafetensorsHeaderBytes + 1) + "{}");
  ExpectError(ReadSafetensorsLayout(path).status(), absl::StatusCode::kInvalidArgument,
              "safetensors file " + path +
                  ": header length 104857601 is over the 104857600-byte (100 MiB) limit");
}

TEST_F(SafetensorsFileTest, HeaderLengthPastEndOfFileIsDataLoss) {
  const std::string path = Path("cut.safetensors");
  WriteFile(path, LengthPrefix(100) + "{}");
  ExpectError(
      ReadSafetensorsLayout(path).status(), absl::StatusCode::kDataLoss,
      "safetensors file " + path + ": header length 100 runs past the end of the file (10 bytes)");
}

TEST_F(SafetensorsFileTest, TruncatedDataSectionIsDataLoss) {
  const std::string path = WriteSample();
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 5);
  ExpectError(ReadSafetensorsLayout(path).status(), absl::StatusCode::kDataLoss,
              "safetensors file " + path +
                  ": tensor \"bias\": data_offsets [32, 42] end past the data section's 37 "
                  "bytes; the file is truncated");
}

TEST_F(SafetensorsFileTest, TrailingBytesAfterDataAreInvalid) {
  const std::string path = WriteSample();
  std::ofstream(path, std::ios::binary | std::ios::app) << "xyz";
  ExpectError(ReadSafetensorsLayout(path).status(), absl::StatusCode::kInvalidArgument,
              "safetensors file " + path +
                  ": data section bytes [42, 45) after the last tensor belong to no tensor");
}

TEST_F(SafetensorsFileTest, FileTruncatedAfterLayoutWasReadIsDataLoss) {
  const std::string path = WriteSample();
  StatusOr<SafetensorsLayout> layout = ReadSafetensorsLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status();
  const uint64_t full = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, full - 1);
  std::string buffer(layout->data_size, '\0');
  ExpectError(
      ReadSafetensorsData(path, *layout, buffer.data(), buffer.size()), absl::StatusCode::kDataLoss,
      absl::StrCat("safetensors file ", path, " is ", full - 1, " bytes but its layout describes ",
                   full, "; the file changed since its header was read"));
}

TEST_F(SafetensorsFileTest, SmallDestinationIsInvalid) {
  const std::string path = WriteSample();
  StatusOr<SafetensorsLayout> layout = ReadSafetensorsLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status();
  std::string buffer(41, '\0');
  ExpectError(ReadSafetensorsData(path, *layout, buffer.data(), buffer.size()),
              absl::StatusCode::kInvalidArgument,
              "reading safetensors file " + path +
                  ": destination buffer is 41 bytes but the data section is 42 bytes");
}

TEST_F(SafetensorsFileTest, OverwritesAnExistingFile) {
  const std::string path = WriteSample();
  const std::string data = "12345678";
  ASSERT_TRUE(
      WriteSafetensorsAtomic(path, {{"x", DType::kU64, {1}, 0, 8}}, {}, data.data(), 8).ok());
  StatusOr<SafetensorsLayout> layout = ReadSafetensorsLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->tensors.size(), 1u);
  EXPECT_EQ(layout->tensors[0].name, "x");
}

// Every failed write leaves the destination as it was and no temporary file behind.
class FailedWriteTest : public SafetensorsFileTest {
 protected:
  void SetUp() override {
    path_ = Path("dest.safetensors");
    WriteFile(path_, "previous contents");
  }
  void TearDown() override {
    EXPECT_EQ(ReadFile(path_), "previous contents");
    EXPECT_TRUE(OtherFiles(dir_.path(), "dest.safetensors").empty());
  }
  std::string path_;
};

TEST_F(FailedWriteTest, DataSizeLargerThanTensors) {
  const std::string data(50, 'd');
  ExpectError(WriteSafetensorsAtomic(path_, SampleTensors(), {}, data.data(), data.size()),
              absl::StatusCode::kInvalidArgument,
              "safetensors file " + path_ +
                  ": data section bytes [42, 50) after the last tensor belong to no tensor");
  ExpectError(WriteSafetensorsAtomic(path_, SampleTensors(), {}, data.data(), data.size()),
              absl::StatusCode::kInvalidArgument,
              "; fix the tensors or data size given to the writer");
}

TEST_F(FailedWriteTest, DataSizeSmallerThanTensors) {
  const std::string data(40, 'd');
  ExpectError(WriteSafetensorsAtomic(path_, SampleTensors(), {}, data.data(), data.size()),
              absl::StatusCode::kInvalidArgument,
              "tensor \"bias\": data_offsets [32, 42] end past the data section's 40 bytes");
}

TEST_F(FailedWriteTest, DuplicateNames) {
  const std::string data(8, 'd');
  ExpectError(
      WriteSafetensorsAtomic(path_, {{"a", DType::kU8, {4}, 0, 4}, {"a", DType::kU8, {4}, 4, 4}},
                             {}, data.data(), data.size()),
      absl::StatusCode::kInvalidArgument,
      "writing safetensors file " + path_ +
          ": duplicate tensor name \"a\"; tensor names must be unique");
}

TEST_F(FailedWriteTest, NameNotUtf8) {
  const std::string data(4, 'd');
  ExpectError(
      WriteSafetensorsAtomic(path_, {{"bad\xff", DType::kU8, {4}, 0, 4}}, {}, data.data(), 4),
      absl::StatusCode::kInvalidArgument, "is not valid UTF-8");
}

TEST_F(FailedWriteTest, CommitBeforeAllDataIsFailedPrecondition) {
  auto writer = SafetensorsWriter::Create(path_, SampleTensors(), {}, 42);
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_EQ((*writer)->temp_path(), "");  // unnamed (O_TMPFILE) until Commit
  EXPECT_TRUE(OtherFiles(dir_.path(), "dest.safetensors").empty());
  const std::string data = SampleData();
  ASSERT_TRUE((*writer)->Append(data.data(), 40).ok());
  ExpectError((*writer)->Commit(), absl::StatusCode::kFailedPrecondition,
              "writing safetensors file " + path_ + ": Commit after 40 of 42 data bytes");
  EXPECT_TRUE(OtherFiles(dir_.path(), "dest.safetensors").empty());
  ExpectError((*writer)->Append(data.data(), 2), absl::StatusCode::kFailedPrecondition,
              "Append after the writer finished");
}

TEST_F(FailedWriteTest, AppendPastDataSizeIsInvalid) {
  auto writer = SafetensorsWriter::Create(path_, SampleTensors(), {}, 42);
  ASSERT_TRUE(writer.ok()) << writer.status();
  const std::string data(43, 'd');
  ExpectError((*writer)->Append(data.data(), 43), absl::StatusCode::kInvalidArgument,
              "appending 43 bytes at data offset 0 would pass the 42-byte data section");
  ExpectError((*writer)->Commit(), absl::StatusCode::kFailedPrecondition,
              "Commit after the writer finished");
}

TEST_F(FailedWriteTest, DestroyingAnUncommittedWriterRemovesTheTemporaryFile) {
  {
    auto writer = SafetensorsWriter::Create(path_, SampleTensors(), {}, 42);
    ASSERT_TRUE(writer.ok()) << writer.status();
    const std::string data = SampleData();
    ASSERT_TRUE((*writer)->Append(data.data(), data.size()).ok());
  }
  EXPECT_TRUE(OtherFiles(dir_.path(), "dest.safetensors").empty());
}

// A writer killed before Commit (a killed `ferry pull`) used to leave "<path>.tmp.<hex>" behind
// for good: 20 kills left 16 files and 10 GB. The unnamed file dies with the process.
TEST_F(FailedWriteTest, AKilledWriterLeavesNoFile) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto writer = SafetensorsWriter::Create(path_, SampleTensors(), {}, 42);
    if (!writer.ok()) ::_exit(2);
    const std::string data = SampleData();
    if (!(*writer)->Append(data.data(), 40).ok()) ::_exit(3);
    ::raise(SIGKILL);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  EXPECT_TRUE(OtherFiles(dir_.path(), "dest.safetensors").empty());
}

TEST_F(FailedWriteTest, WriteErrorMidwayIsReportedAndCleanedUp) {
  // A child process with a 64 KiB file-size limit: write() fails with EFBIG part way through a
  // 1 MiB data section.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit = {64 << 10, 64 << 10};
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(10);
    const std::string data(1 << 20, 'd');
    const Status s = WriteSafetensorsAtomic(path_, {{"big", DType::kU8, {1 << 20}, 0, 1 << 20}}, {},
                                            data.data(), data.size());
    if (s.ok()) _exit(11);
    if (s.code() != absl::ErrnoToStatusCode(EFBIG)) _exit(12);
    const std::string m(s.message());
    if (m.find("writing safetensors file " + path_ +
               ": writing 1048576 bytes at data offset 0 to an unnamed temporary file beside " +
               path_) == std::string::npos) {
      _exit(13);
    }
    if (m.find("File too large") == std::string::npos) _exit(14);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(SafetensorsWriterTest, MissingDirectoryIsNotFound) {
  TempDir dir;
  const std::string path = dir.path() + "/no/such/dir/m.safetensors";
  const Status s = WriteSafetensorsAtomic(path, {}, {}, nullptr, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("writing safetensors file " + path + ": creating a temporary file in " +
                        dir.path() + "/no/such/dir failed"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("check that the directory exists"));
}

TEST(SafetensorsWriterTest, EmptyModelRoundTrips) {
  TempDir dir;
  const std::string path = dir.path() + "/empty.safetensors";
  ASSERT_TRUE(WriteSafetensorsAtomic(path, {}, {}, nullptr, 0).ok());
  StatusOr<SafetensorsLayout> layout = ReadSafetensorsLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_TRUE(layout->tensors.empty());
  EXPECT_EQ(layout->data_offset, 16u);
  EXPECT_EQ(layout->data_size, 0u);
}

}  // namespace
}  // namespace ferry::weights
