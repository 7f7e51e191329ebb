// The safetensors file format: parsing and strict validation of the header, reading the data
// section, and writing files atomically.
//
// Format: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON (an object), then the data
// section. Each JSON key names a tensor and maps to
//   {"dtype": "BF16", "shape": [u64, ...], "data_offsets": [begin, end]}
// with offsets relative to the data section (which starts at byte 8 + N); the optional key
// "__metadata__" maps to an object of string values. A valid file's tensors cover the data
// section exactly: no overlaps, no holes, nothing after the last tensor.
//
// Errors: InvalidArgument for a header that breaks the format (fix or regenerate the file),
// DataLoss for a file shorter than its header says or one that changed while being read, and
// the errno-derived code for I/O failures. Every message names the file (`source`).
//
// All functions are thread-safe; SafetensorsWriter is thread-compatible.
#ifndef FERRY_WEIGHTS_SAFETENSORS_H_
#define FERRY_WEIGHTS_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ferry/status.h"
#include "weights/dtype.h"

namespace ferry::weights {

// Largest header accepted (the limit the reference implementation uses).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;
// Most tensors accepted in one file.
inline constexpr uint64_t kMaxSafetensorsTensors = 1'000'000;

// "[4096, 11008]": a shape for messages.
std::string ShapeString(const std::vector<uint64_t>& shape);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t offset = 0;  // in the data section
  uint64_t size = 0;    // bytes: product(shape) * DTypeSize(dtype)

  bool operator==(const TensorInfo&) const = default;
};

struct SafetensorsLayout {
  std::vector<TensorInfo> tensors;  // sorted by offset (ties: by size, then name)
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + N
  uint64_t data_size = 0;
};

// Parses and validates a header's JSON. `data_size` is the length of the data section that
// follows it (file size - 8 - header_json.size()); `source` names the file in errors. On success
// the tensors cover [0, data_size) exactly and layout.data_offset = 8 + header_json.size().
StatusOr<SafetensorsLayout> ParseSafetensorsHeader(std::string_view header_json, uint64_t data_size,
                                                   std::string_view source);

// Reads and validates the header of the file at `path` (reads only the header).
StatusOr<SafetensorsLayout> ReadSafetensorsLayout(const std::string& path);

// Reads the data section of `path` (whose header gave `layout`) into dst[0, layout.data_size),
// in large sequential preads. REQUIRES: dst_size >= layout.data_size (else InvalidArgument).
// Fails with DataLoss if the file's size no longer matches the layout or it ends early; the
// message names the path and the offset.
Status ReadSafetensorsData(const std::string& path, const SafetensorsLayout& layout, void* dst,
                           uint64_t dst_size);

// Returns the 8-byte length followed by the header JSON, padded with spaces so that the data
// section starts at a multiple of 8 bytes. `tensors` are written in the given order (data order);
// "__metadata__" comes first and is left out when `metadata` is empty. Does not validate: invalid
// UTF-8 in names is replaced by U+FFFD. WriteSafetensorsAtomic validates before writing.
std::string EncodeSafetensorsHeader(const std::vector<TensorInfo>& tensors,
                                    const std::map<std::string, std::string>& metadata);

// Writes a complete safetensors file to `path` atomically: on success `path` holds the new file
// (durably: file and directory fsynced); on any failure `path` is untouched and no temporary file
// is left. The header is validated as ParseSafetensorsHeader would validate it against
// `data_size` before anything is written.
Status WriteSafetensorsAtomic(const std::string& path, const std::vector<TensorInfo>& tensors,
                              const std::map<std::string, std::string>& metadata, const void* data,
                              uint64_t data_size);

// Writes a safetensors file in pieces, for data sections too large to hold in memory at once.
// Create() validates the header and writes it to an unnamed file in the same directory
// (O_TMPFILE; where the filesystem lacks it, "<path>.tmp.<random>"); Append() adds data-section
// bytes in order; Commit() requires exactly `data_size` bytes appended, fsyncs, names the file
// "<path>.tmp.<random>", renames it over `path` and fsyncs the directory. Destroying the writer
// before a successful Commit() (or after any failed call) removes the temporary file and leaves
// `path` untouched; a process killed before Commit leaves no file behind (the unnamed file dies
// with it).
class SafetensorsWriter {
 public:
  static StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, const std::vector<TensorInfo>& tensors,
      const std::map<std::string, std::string>& metadata, uint64_t data_size);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends data-section bytes. Appending past data_size is InvalidArgument. After any failure
  // the writer is finished: later calls return FailedPrecondition.
  Status Append(const void* data, uint64_t size);

  // Publishes the file under `path`. FailedPrecondition if fewer than data_size bytes were
  // appended (the temporary file is removed).
  Status Commit();

  const std::string& path() const { return path_; }
  // The temporary file's name; empty while it has none (O_TMPFILE, until Commit).
  const std::string& temp_path() const { return temp_path_; }

 private:
  SafetensorsWriter(std::string path, std::string temp_path, int fd, uint64_t data_size);
  Status Fail(Status status);  // closes and removes the temporary file; returns `status`
  void Abandon();
  std::string TempName() const;  // for messages

  const std::string path_;
  std::string temp_path_;  // empty while the file is unnamed
  int fd_;                 // -1 once closed
  const uint64_t data_size_;
  uint64_t written_ = 0;
  bool finished_ = false;
};

}  // namespace ferry::weights

#endif  // FERRY_WEIGHTS_SAFETENSORS_H_
