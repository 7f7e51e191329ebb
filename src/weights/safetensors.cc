#include "weights/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/fd.h"
#include "nlohmann/json.hpp"

namespace ferry::weights {
namespace {

constexpr uint64_t kReadChunkBytes = 16ull << 20;
constexpr uint64_t kWriteChunkBytes = 1ull << 30;
// Names are quoted in messages up to this length, then elided.
constexpr size_t kMaxQuotedBytes = 120;

std::string Str(std::string_view s) { return std::string(s); }

std::string Quote(std::string_view s) {
  if (s.size() <= kMaxQuotedBytes) return absl::StrCat("\"", Str(s), "\"");
  return absl::StrCat("\"", Str(s.substr(0, kMaxQuotedBytes)), "...\" (", s.size(), " bytes)");
}

Status ErrnoError(int err, std::string_view what) {
  return Status(absl::ErrnoToStatusCode(err), absl::StrCat(Str(what), ": ", std::strerror(err)));
}

// Reads exactly `size` bytes at `offset`; DataLoss if the file ends first.
Status PreadFull(int fd, void* dst, uint64_t size, uint64_t offset, const std::string& path) {
  auto* out = static_cast<uint8_t*>(dst);
  while (size > 0) {
    const size_t want = static_cast<size_t>(std::min(size, kReadChunkBytes));
    const ssize_t n = ::pread(fd, out, want, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno,
                        absl::StrCat("reading safetensors file ", path, " at byte ", offset));
    }
    if (n == 0) {
      return absl::DataLossError(absl::StrCat("safetensors file ", path,
                                              " ends early: no data at byte ", offset, " (", size,
                                              " more bytes expected); the file is truncated "
                                              "or was replaced while being read"));
    }
    out += n;
    offset += static_cast<uint64_t>(n);
    size -= static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

Status WriteFull(int fd, const void* src, uint64_t size, std::string_view what) {
  const auto* in = static_cast<const uint8_t*>(src);
  while (size > 0) {
    const size_t want = static_cast<size_t>(std::min(size, kWriteChunkBytes));
    const ssize_t n = ::write(fd, in, want);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, what);
    }
    in += n;
    size -= static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

StatusOr<uint64_t> FileSize(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return ErrnoError(errno, absl::StrCat("stat of safetensors file ", path, " failed"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors file ", path, " is not a regular file; pass a file path"));
  }
  return static_cast<uint64_t>(st.st_size);
}

StatusOr<int> OpenForRead(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoError(errno, absl::StrCat("opening safetensors file ", path,
                                          " failed (check the path and its permissions)"));
  }
  return fd;
}

// A tensor entry while its fields are being read.
struct PendingTensor {
  TensorInfo info;
  bool has_dtype = false;
  bool has_shape = false;
  std::vector<uint64_t> offsets;
  bool has_offsets = false;
};

// nlohmann::json SAX handler that validates the header's structure while it is parsed: the
// schema is fixed and at most three levels deep, so no DOM is built and a bad header stops the
// parse at its first error. Returns false from an event to stop; error() says why.
class HeaderSax {
 public:
  using json = nlohmann::json;

  explicit HeaderSax(uint64_t data_size) : data_size_(data_size) {}

  const std::string& error() const { return error_; }
  // Whether the error is a tensor ending past the data section (a truncated file).
  bool past_end() const { return past_end_; }
  std::vector<TensorInfo>& tensors() { return tensors_; }
  std::map<std::string, std::string>& metadata() { return metadata_; }

  bool null() { return Unexpected("null"); }
  bool boolean(bool) { return Unexpected("a boolean"); }
  bool number_integer(json::number_integer_t v) {
    if (v < 0) return Unexpected("a negative number");
    return Unsigned(static_cast<uint64_t>(v));
  }
  bool number_unsigned(json::number_unsigned_t v) { return Unsigned(v); }
  bool number_float(json::number_float_t, const std::string& text) {
    return Unexpected(absl::StrCat("the number ", Quote(text), " (not an integer in [0, 2^64))"));
  }
  bool binary(json::binary_t&) { return Unexpected("binary data"); }

  bool string(std::string& s) {
    if (state_ == State::kTensorValue && field_ == Field::kDType) {
      // Only the safetensors spelling is valid in a header, not the torch.* one.
      StatusOr<DType> dtype = ParseDTypeName(s);
      if (!dtype.ok()) {
        return Fail(absl::StrCat("tensor ", Quote(name_), ": unknown dtype ", Quote(s),
                                 "; valid dtypes: ", ValidDTypeNames()));
      }
      pending_.info.dtype = *dtype;
      pending_.has_dtype = true;
      state_ = State::kTensor;
      return true;
    }
    if (state_ == State::kMetadataValue) {
      metadata_.emplace(std::move(metadata_key_), std::move(s));
      state_ = State::kMetadata;
      return true;
    }
    return Unexpected("a string");
  }

  bool start_object(std::size_t) {
    switch (state_) {
      case State::kStart:
        state_ = State::kRoot;
        return true;
      case State::kRootValue:
        if (name_ == kMetadataKey) {
          state_ = State::kMetadata;
        } else {
          pending_ = PendingTensor();
          pending_.info.name = name_;
          state_ = State::kTensor;
        }
        return true;
      default:
        return Unexpected("an object");
    }
  }

  bool key(std::string& k) {
    switch (state_) {
      case State::kRoot:
        return RootKey(std::move(k));
      case State::kTensor:
        return TensorKey(k);
      case State::kMetadata:
        if (metadata_.count(k) != 0) {
          return Fail(absl::StrCat("duplicate __metadata__ key ", Quote(k)));
        }
        metadata_key_ = std::move(k);
        state_ = State::kMetadataValue;
        return true;
      default:
        return Fail("internal error: unexpected key");  // the JSON parser never does this
    }
  }

  bool end_object() {
    switch (state_) {
      case State::kRoot:
        state_ = State::kDone;
        return true;
      case State::kMetadata:
        state_ = State::kRoot;
        return true;
      case State::kTensor:
        state_ = State::kRoot;
        return FinishTensor();
      default:
        return Fail("internal error: unexpected end of object");
    }
  }

  bool start_array(std::size_t) {
    if (state_ == State::kTensorValue && field_ == Field::kShape) {
      state_ = State::kShape;
      return true;
    }
    if (state_ == State::kTensorValue && field_ == Field::kOffsets) {
      state_ = State::kOffsets;
      return true;
    }
    return Unexpected("an array");
  }

  bool end_array() {
    if (state_ == State::kShape) {
      pending_.has_shape = true;
      state_ = State::kTensor;
      return true;
    }
    if (state_ == State::kOffsets) {
      if (pending_.offsets.size() != 2) {
        return Fail(absl::StrCat("tensor ", Quote(name_), ": data_offsets has ",
                                 pending_.offsets.size(), " entries; it must be [begin, end]"));
      }
      pending_.has_offsets = true;
      state_ = State::kTensor;
      return true;
    }
    return Fail("internal error: unexpected end of array");
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) {
    return Fail(absl::StrCat("header is not valid JSON: ", ex.what()));
  }

 private:
  static constexpr std::string_view kMetadataKey = "__metadata__";

  enum class State {
    kStart,
    kRoot,           // in the top-level object, before a key or its end
    kRootValue,      // after a top-level key
    kTensor,         // in a tensor's object
    kTensorValue,    // after a tensor field's key
    kShape,          // in "shape": [...]
    kOffsets,        // in "data_offsets": [...]
    kMetadata,       // in "__metadata__": {...}
    kMetadataValue,  // after a metadata key
    kDone,
  };
  enum class Field { kDType, kShape, kOffsets };

  bool Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }

  // A value of the wrong type (`what`) arrived; says what was expected here.
  bool Unexpected(std::string_view what) {
    std::string expected;
    switch (state_) {
      case State::kStart:
        expected = "the header must be a JSON object";
        break;
      case State::kRootValue:
        expected = name_ == kMetadataKey
                       ? std::string("__metadata__ must be an object of strings")
                       : absl::StrCat("tensor ", Quote(name_),
                                      " must be an object with dtype, shape and data_offsets");
        break;
      case State::kTensorValue:
      case State::kShape:
      case State::kOffsets:
        if (field_ == Field::kDType) {
          expected = absl::StrCat("tensor ", Quote(name_), ": dtype must be a string");
        } else if (field_ == Field::kShape) {
          expected = absl::StrCat("tensor ", Quote(name_),
                                  ": shape must be an array of non-negative integers");
        } else {
          expected = absl::StrCat("tensor ", Quote(name_),
                                  ": data_offsets must be an array of two non-negative integers");
        }
        break;
      case State::kMetadataValue:
        expected =
            absl::StrCat("__metadata__ value for key ", Quote(metadata_key_), " must be a string");
        break;
      default:
        expected = "unexpected value";
        break;
    }
    return Fail(absl::StrCat(expected, ", got ", Str(what)));
  }

  bool Unsigned(uint64_t v) {
    if (state_ == State::kShape) {
      pending_.info.shape.push_back(v);
      return true;
    }
    if (state_ == State::kOffsets) {
      if (pending_.offsets.size() == 2) {
        return Fail(
            absl::StrCat("tensor ", Quote(name_),
                         ": data_offsets has more than 2 entries; it must be [begin, end]"));
      }
      pending_.offsets.push_back(v);
      return true;
    }
    return Unexpected("a number");
  }

  bool RootKey(std::string k) {
    if (k.empty()) return Fail("empty tensor name");
    if (!seen_.insert(k).second) {
      return Fail(k == kMetadataKey ? std::string("duplicate __metadata__")
                                    : absl::StrCat("duplicate tensor name ", Quote(k)));
    }
    if (k != kMetadataKey && ++tensor_count_ > kMaxSafetensorsTensors) {
      return Fail(absl::StrCat("more than ", kMaxSafetensorsTensors, " tensors; the limit is ",
                               kMaxSafetensorsTensors, " (split the checkpoint into shards)"));
    }
    name_ = std::move(k);
    state_ = State::kRootValue;
    return true;
  }

  bool TensorKey(const std::string& k) {
    bool* has = nullptr;
    if (k == "dtype") {
      field_ = Field::kDType;
      has = &pending_.has_dtype;
    } else if (k == "shape") {
      field_ = Field::kShape;
      has = &pending_.has_shape;
    } else if (k == "data_offsets") {
      field_ = Field::kOffsets;
      has = &pending_.has_offsets;
    } else {
      return Fail(absl::StrCat("tensor ", Quote(name_), ": unknown field ", Quote(k),
                               " (expected dtype, shape and data_offsets)"));
    }
    if (*has) {
      return Fail(absl::StrCat("tensor ", Quote(name_), ": duplicate field ", Quote(k)));
    }
    state_ = State::kTensorValue;
    return true;
  }

  bool FinishTensor() {
    const char* missing = !pending_.has_dtype     ? "dtype"
                          : !pending_.has_shape   ? "shape"
                          : !pending_.has_offsets ? "data_offsets"
                                                  : nullptr;
    if (missing != nullptr) {
      return Fail(absl::StrCat("tensor ", Quote(name_), ": missing field \"", missing, "\""));
    }
    TensorInfo& t = pending_.info;
    uint64_t elements = 1;
    for (uint64_t d : t.shape) {
      if (__builtin_mul_overflow(elements, d, &elements)) {
        return Fail(absl::StrCat("tensor ", Quote(name_), ": shape ", ShapeString(t.shape),
                                 " has more than 2^64 elements"));
      }
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(elements, DTypeSize(t.dtype), &bytes)) {
      return Fail(absl::StrCat("tensor ", Quote(name_), ": shape ", ShapeString(t.shape), " of ",
                               Str(DTypeName(t.dtype)), " is more than 2^64 bytes"));
    }
    const uint64_t begin = pending_.offsets[0];
    const uint64_t end = pending_.offsets[1];
    const std::string offsets = absl::StrCat("data_offsets [", begin, ", ", end, "]");
    if (begin > end) {
      return Fail(absl::StrCat("tensor ", Quote(name_), ": ", offsets, " begin after end"));
    }
    if (end > data_size_) {
      past_end_ = true;
      return Fail(absl::StrCat("tensor ", Quote(name_), ": ", offsets,
                               " end past the data section's ", data_size_, " bytes"));
    }
    if (end - begin != bytes) {
      return Fail(absl::StrCat("tensor ", Quote(name_), ": ", offsets, " span ", end - begin,
                               " bytes but shape ", ShapeString(t.shape), " of ",
                               Str(DTypeName(t.dtype)), " needs ", bytes, " bytes"));
    }
    t.offset = begin;
    t.size = bytes;
    tensors_.push_back(std::move(t));
    return true;
  }

  const uint64_t data_size_;
  State state_ = State::kStart;
  Field field_ = Field::kDType;
  std::string name_;  // the current top-level key
  std::string metadata_key_;
  PendingTensor pending_;
  std::set<std::string> seen_;
  uint64_t tensor_count_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::string error_;
  bool past_end_ = false;
};

// Checks that the tensors (sorted by offset) cover [0, data_size) exactly.
std::string CheckCoverage(const std::vector<TensorInfo>& tensors, uint64_t data_size) {
  uint64_t covered = 0;  // end of the data covered so far
  const TensorInfo* last = nullptr;
  for (const TensorInfo& t : tensors) {
    if (t.offset < covered) {
      return absl::StrCat("tensors ", Quote(last->name), " [", last->offset, ", ",
                          last->offset + last->size, ") and ", Quote(t.name), " [", t.offset, ", ",
                          t.offset + t.size, ") overlap");
    }
    if (t.offset > covered) {
      return absl::StrCat("data section bytes [", covered, ", ", t.offset,
                          ") belong to no tensor (a hole before ", Quote(t.name),
                          "); every data byte must belong to exactly one tensor");
    }
    covered = t.offset + t.size;
    if (t.size > 0 || last == nullptr) last = &t;
  }
  if (covered != data_size) {
    return absl::StrCat("data section bytes [", covered, ", ", data_size,
                        ") after the last tensor belong to no tensor (trailing bytes); every "
                        "data byte must belong to exactly one tensor");
  }
  return "";
}

std::string TempSuffix() {
  std::random_device rd;
  const uint64_t r = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return absl::StrFormat(".tmp.%016x", r);
}

// Where a header being parsed comes from, which decides the advice in error messages.
enum class HeaderOrigin {
  kCaller,  // ParseSafetensorsHeader: bytes from somewhere
  kFile,    // a file's header; data_size is the real size of its data section, so a tensor
            // ending past it means the file is truncated (DataLoss)
  kWriter,  // a header about to be written: the caller's tensor list is wrong
};

StatusOr<SafetensorsLayout> ParseHeader(std::string_view header_json, uint64_t data_size,
                                        std::string_view source, HeaderOrigin origin) {
  auto invalid = [&](std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors file ", Str(source), ": ", Str(what),
        origin == HeaderOrigin::kWriter ? "; fix the tensors or data size given to the writer"
                                        : "; re-create or re-download the file"));
  };
  if (header_json.size() > kMaxSafetensorsHeaderBytes) {
    return invalid(absl::StrCat("header is ", header_json.size(), " bytes, over the ",
                                kMaxSafetensorsHeaderBytes, "-byte (100 MiB) limit"));
  }
  HeaderSax sax(data_size);
  const bool ok = nlohmann::json::sax_parse(header_json.begin(), header_json.end(), &sax);
  if (!ok && origin == HeaderOrigin::kFile && sax.past_end()) {
    return absl::DataLossError(absl::StrCat("safetensors file ", Str(source), ": ", sax.error(),
                                            "; the file is truncated (copy it again)"));
  }
  if (!ok || !sax.error().empty()) {
    return invalid(sax.error().empty() ? "header is not valid JSON" : sax.error());
  }
  SafetensorsLayout layout;
  layout.tensors = std::move(sax.tensors());
  layout.metadata = std::move(sax.metadata());
  layout.data_offset = 8 + header_json.size();
  layout.data_size = data_size;
  std::sort(layout.tensors.begin(), layout.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::tie(a.offset, a.size, a.name) < std::tie(b.offset, b.size, b.name);
            });
  if (std::string error = CheckCoverage(layout.tensors, data_size); !error.empty()) {
    return invalid(error);
  }
  return layout;
}

}  // namespace

std::string ShapeString(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

StatusOr<SafetensorsLayout> ParseSafetensorsHeader(std::string_view header_json, uint64_t data_size,
                                                   std::string_view source) {
  return ParseHeader(header_json, data_size, source, HeaderOrigin::kCaller);
}

StatusOr<SafetensorsLayout> ReadSafetensorsLayout(const std::string& path) {
  FERRY_ASSIGN_OR_RETURN(int raw_fd, OpenForRead(path));
  internal::Fd fd(raw_fd);
  FERRY_ASSIGN_OR_RETURN(uint64_t file_size, FileSize(fd.get(), path));
  if (file_size < 8) {
    return absl::DataLossError(
        absl::StrCat("safetensors file ", path, " is ", file_size,
                     " bytes, too short for the 8-byte header length; the file is truncated or not "
                     "safetensors"));
  }
  uint8_t length_bytes[8];
  FERRY_RETURN_IF_ERROR(PreadFull(fd.get(), length_bytes, 8, 0, path));
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
  if (header_size > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors file ", path, ": header length ", header_size, " is over the ",
                     kMaxSafetensorsHeaderBytes,
                     "-byte (100 MiB) limit; the file is corrupt or not "
                     "safetensors"));
  }
  if (header_size > file_size - 8) {
    return absl::DataLossError(absl::StrCat("safetensors file ", path, ": header length ",
                                            header_size, " runs past the end of the file (",
                                            file_size, " bytes); the file is truncated"));
  }
  std::string header(header_size, '\0');
  FERRY_RETURN_IF_ERROR(PreadFull(fd.get(), header.data(), header_size, 8, path));
  return ParseHeader(header, file_size - 8 - header_size, path, HeaderOrigin::kFile);
}

Status ReadSafetensorsData(const std::string& path, const SafetensorsLayout& layout, void* dst,
                           uint64_t dst_size) {
  if (dst_size < layout.data_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reading safetensors file ", path, ": destination buffer is ", dst_size,
        " bytes but the data section is ", layout.data_size, " bytes; pass a larger buffer"));
  }
  FERRY_ASSIGN_OR_RETURN(int raw_fd, OpenForRead(path));
  internal::Fd fd(raw_fd);
  FERRY_ASSIGN_OR_RETURN(uint64_t file_size, FileSize(fd.get(), path));
  if (file_size != layout.data_offset + layout.data_size) {
    return absl::DataLossError(
        absl::StrCat("safetensors file ", path, " is ", file_size,
                     " bytes but its layout describes ", layout.data_offset + layout.data_size,
                     "; the file changed since its header was read (re-read the layout)"));
  }
  ::posix_fadvise(fd.get(), static_cast<off_t>(layout.data_offset),
                  static_cast<off_t>(layout.data_size), POSIX_FADV_SEQUENTIAL);
  return PreadFull(fd.get(), dst, layout.data_size, layout.data_offset, path);
}

std::string EncodeSafetensorsHeader(const std::vector<TensorInfo>& tensors,
                                    const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  for (const TensorInfo& t : tensors) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = Str(DTypeName(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = {t.offset, t.offset + t.size};
    j[t.name] = std::move(entry);
  }
  std::string text = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, const std::vector<TensorInfo>& tensors,
    const std::map<std::string, std::string>& metadata, uint64_t data_size) {
  std::set<std::string_view> names;
  for (const TensorInfo& t : tensors) {
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("writing safetensors file ", path,
                                                     ": duplicate tensor name ", Quote(t.name),
                                                     "; tensor names must be unique"));
    }
  }
  // Validating the encoded header checks everything a reader will check.
  const std::string header = EncodeSafetensorsHeader(tensors, metadata);
  FERRY_ASSIGN_OR_RETURN(
      SafetensorsLayout layout,
      ParseHeader(std::string_view(header).substr(8), data_size, path, HeaderOrigin::kWriter));
  std::set<std::string_view> encoded_names;
  for (const TensorInfo& t : layout.tensors) encoded_names.insert(t.name);
  for (const TensorInfo& t : tensors) {
    if (encoded_names.count(t.name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("writing safetensors file ", path,
                                                     ": tensor name ", Quote(t.name),
                                                     " is not valid UTF-8"));
    }
  }
  std::string temp_path;
  // An unnamed file in the target directory (O_TMPFILE): a process killed before Commit leaves
  // nothing behind, the kernel frees it. Filesystems without O_TMPFILE get a named temporary
  // file, removed on every failure this process lives through.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0 && errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
    return ErrnoError(errno, absl::StrCat("writing safetensors file ", path,
                                          ": creating a temporary file in ", dir,
                                          " failed (check that the directory exists and is "
                                          "writable)"));
  }
  for (int attempt = 0; attempt < 10 && fd < 0; ++attempt) {
    temp_path = path + TempSuffix();
    fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) {
    return ErrnoError(errno, absl::StrCat("writing safetensors file ", path,
                                          ": creating temporary file ", temp_path,
                                          " failed (check that the directory exists and is "
                                          "writable)"));
  }
  std::unique_ptr<SafetensorsWriter> writer(
      new SafetensorsWriter(path, std::move(temp_path), fd, data_size));
  if (Status s = WriteFull(fd, header.data(), header.size(),
                           absl::StrCat("writing safetensors file ", path, ": header to ",
                                        writer->TempName(), " failed"));
      !s.ok()) {
    return writer->Fail(std::move(s));
  }
  return writer;
}

SafetensorsWriter::SafetensorsWriter(std::string path, std::string temp_path, int fd,
                                     uint64_t data_size)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd), data_size_(data_size) {}

SafetensorsWriter::~SafetensorsWriter() {
  if (!finished_) Abandon();
}

std::string SafetensorsWriter::TempName() const {
  if (!temp_path_.empty()) return temp_path_;
  return absl::StrCat("an unnamed temporary file beside ", path_);
}

void SafetensorsWriter::Abandon() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  }
  finished_ = true;
}

Status SafetensorsWriter::Fail(Status status) {
  Abandon();
  return status;
}

Status SafetensorsWriter::Append(const void* data, uint64_t size) {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("writing safetensors file ", path_,
                     ": Append after the writer finished (committed or "
                     "failed); create a new writer"));
  }
  if (size > data_size_ - written_) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("writing safetensors file ", path_, ": appending ", size,
                     " bytes at data offset ", written_, " would pass the ", data_size_,
                     "-byte data section the header declares; nothing was written to ", path_)));
  }
  if (size > 0 && data == nullptr) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "writing safetensors file ", path_, ": Append of ", size, " bytes from a null pointer")));
  }
  if (Status s =
          WriteFull(fd_, data, size,
                    absl::StrCat("writing safetensors file ", path_, ": writing ", size,
                                 " bytes at data offset ", written_, " to ", TempName(),
                                 " failed (check free space); nothing was written to ", path_));
      !s.ok()) {
    return Fail(std::move(s));
  }
  written_ += size;
  return absl::OkStatus();
}

Status SafetensorsWriter::Commit() {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("writing safetensors file ", path_,
                     ": Commit after the writer finished (committed or "
                     "failed); create a new writer"));
  }
  if (written_ != data_size_) {
    return Fail(absl::FailedPreconditionError(absl::StrCat(
        "writing safetensors file ", path_, ": Commit after ", written_, " of ", data_size_,
        " data bytes; append the whole data section first (nothing was written to ", path_, ")")));
  }
  const std::string context = absl::StrCat("writing safetensors file ", path_, ": ");
  if (::fsync(fd_) != 0) {
    return Fail(ErrnoError(errno, absl::StrCat(context, "fsync of ", TempName(), " failed")));
  }
  if (temp_path_.empty()) {
    // Give the unnamed file a name beside `path` (linkat never replaces), then rename it over
    // `path` as a named temporary file would be.
    const std::string self = absl::StrCat("/proc/self/fd/", fd_);
    for (int attempt = 0; attempt < 10 && temp_path_.empty(); ++attempt) {
      const std::string name = path_ + TempSuffix();
      if (::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0) {
        temp_path_ = name;
      } else if (errno != EEXIST) {
        return Fail(ErrnoError(
            errno, absl::StrCat(context, "naming the temporary file ", name, " failed (linkat)")));
      }
    }
    if (temp_path_.empty()) {
      return Fail(absl::AlreadyExistsError(
          absl::StrCat(context, "no free temporary name beside it after 10 tries")));
    }
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    finished_ = true;
    return ErrnoError(err, absl::StrCat(context, "close of ", temp_path_, " failed"));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    finished_ = true;
    return ErrnoError(err, absl::StrCat(context, "rename of ", temp_path_, " failed"));
  }
  finished_ = true;
  std::string dir = std::filesystem::path(path_).parent_path().string();
  if (dir.empty()) dir = ".";
  internal::Fd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0 || ::fsync(dir_fd.get()) != 0) {
    return ErrnoError(errno, absl::StrCat(context,
                                          "the file is in place but fsync of its "
                                          "directory ",
                                          dir, " failed; it may not survive a crash"));
  }
  return absl::OkStatus();
}

Status WriteSafetensorsAtomic(const std::string& path, const std::vector<TensorInfo>& tensors,
                              const std::map<std::string, std::string>& metadata, const void* data,
                              uint64_t data_size) {
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                         SafetensorsWriter::Create(path, tensors, metadata, data_size));
  FERRY_RETURN_IF_ERROR(writer->Append(data, data_size));
  return writer->Commit();
}

}  // namespace ferry::weights
