#include "flows/buffers.h"

#include <algorithm>
#include <limits>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "flows/device_landing.h"
#include "weights/tensor_checksum.h"

namespace ferry::weights {

namespace {

uintptr_t Addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// The index of the span holding [data, data + size), or -1.
int FindSpan(const std::vector<MemorySpan>& spans, const void* data, uint64_t size) {
  for (size_t s = 0; s < spans.size(); ++s) {
    const uintptr_t lo = Addr(spans[s].data);
    if (Addr(data) >= lo && Addr(data) - lo <= spans[s].size &&
        size <= spans[s].size - (Addr(data) - lo)) {
      return static_cast<int>(s);
    }
  }
  return -1;
}

}  // namespace

Status ValidateBufferSet(const BufferSet& set) {
  if (set.buffers.empty()) {
    return absl::InvalidArgumentError("no tensors were given; there is nothing to move");
  }
  if (set.buffers.size() > kMaxBuffers) {
    return absl::InvalidArgumentError(
        absl::StrCat(set.buffers.size(), " tensors exceed the limit of ", kMaxBuffers));
  }
  // Spans: non-null when non-empty, no overlap.
  std::vector<std::pair<uintptr_t, uint64_t>> spans;
  for (size_t s = 0; s < set.spans.size(); ++s) {
    const MemorySpan& span = set.spans[s];
    if (span.size == 0) continue;
    if (span.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("memory span ", s, " has no address"));
    }
    if (Addr(span.data) > std::numeric_limits<uintptr_t>::max() - span.size) {
      return absl::InvalidArgumentError(absl::StrCat("memory span ", s, " wraps around"));
    }
    spans.emplace_back(Addr(span.data), span.size);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t s = 1; s < spans.size(); ++s) {
    if (spans[s - 1].first + spans[s - 1].second > spans[s].first) {
      return absl::InvalidArgumentError(
          "two memory spans overlap; pass each allocation (storage) once");
    }
  }
  std::set<std::string> names;
  uint64_t total = 0;
  struct Range {
    uintptr_t lo;
    uint64_t size;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (const NamedBuffer& b : set.buffers) {
    if (b.name.empty()) return absl::InvalidArgumentError("a tensor has an empty name");
    if (!names.insert(b.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", b.name, " is given twice"));
    }
    uint64_t elements = 1;
    for (uint64_t d : b.shape) {
      if (d != 0 && elements > UINT64_MAX / d) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", b.name, ": shape ", ShapeString(b.shape), " overflows"));
      }
      elements *= d;
    }
    const uint64_t esize = DTypeSize(b.dtype);
    if (elements > UINT64_MAX / esize || elements * esize != b.size) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", b.name, ": ", b.size, " bytes do not match shape ",
                       ShapeString(b.shape), " of ", std::string(DTypeName(b.dtype))));
    }
    if (b.size == 0) continue;
    if (FindSpan(set.spans, b.data, b.size) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", b.name, " (", b.size, " bytes) lies outside every memory span given"));
    }
    total += b.size;
    ranges.push_back(Range{Addr(b.data), b.size, &b.name});
  }
  if (total == 0) {
    return absl::InvalidArgumentError("every tensor is empty; there is no byte to move");
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return std::tie(a.lo, a.size) < std::tie(b.lo, b.size);
  });
  // Overlaps: identical ranges are aliases (tied weights); anything else is refused.
  for (size_t i = 1; i < ranges.size(); ++i) {
    const Range& a = ranges[i - 1];
    const Range& b = ranges[i];
    if (a.lo == b.lo && a.size == b.size) continue;
    if (a.lo + a.size > b.lo) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensors ", *a.name, " and ", *b.name,
                       " overlap in memory without being the same range; ferry cannot write both"));
    }
  }
  return absl::OkStatus();
}

StatusOr<ChecksumFunction> SpanChecksum(const std::vector<MemorySpan>& spans,
                                        ChecksumAlgorithm algorithm) {
  std::map<int, ChecksumFunction> by_device;
  for (const MemorySpan& span : spans) {
    if (span.device < 0 || by_device.count(span.device) != 0) continue;
    FERRY_ASSIGN_OR_RETURN(DeviceLanding landing, MakeDeviceLanding(span.device, algorithm));
    by_device.emplace(span.device, std::move(landing.checksum));
  }
  return ChecksumFunction([spans, by_device = std::move(by_device), algorithm](
                              const void* data, uint64_t size) -> StatusOr<uint64_t> {
    const int s = size == 0 ? -1 : FindSpan(spans, data, size);
    if (s >= 0 && spans[s].device >= 0) return by_device.at(spans[s].device)(data, size);
    return TensorChecksum(data, size, algorithm);
  });
}

StatusOr<ServedModel> ServeBuffers(TransferEngine& engine, const BufferSet& set, int threads) {
  FERRY_RETURN_IF_ERROR(ValidateBufferSet(set));
  ServedModel model;
  // Region of each span (null for empty spans and spans no tensor uses).
  std::vector<Region*> regions(set.spans.size(), nullptr);
  std::vector<int> span_of(set.buffers.size(), -1);
  for (size_t i = 0; i < set.buffers.size(); ++i) {
    const NamedBuffer& b = set.buffers[i];
    if (b.size == 0) continue;
    const int s = FindSpan(set.spans, b.data, b.size);
    span_of[i] = s;
    if (regions[s] != nullptr) continue;
    FERRY_ASSIGN_OR_RETURN(
        std::unique_ptr<Region> region,
        engine.RegisterRegion(set.spans[s].data, set.spans[s].size,
                              set.spans[s].device >= 0 ? MemoryKind::kCuda : MemoryKind::kHost));
    regions[s] = region.get();
    if (model.region == nullptr) {
      model.region = std::move(region);
    } else {
      model.extra_regions.push_back(std::move(region));
    }
  }
  // Checksums over absolute addresses: one table, spread over the threads.
  std::vector<ByteRange> ranges;
  for (size_t i = 0; i < set.buffers.size(); ++i) {
    const NamedBuffer& b = set.buffers[i];
    TensorInfo& t = model.tensors.emplace_back();
    t.name = b.name;
    t.dtype = b.dtype;
    t.shape = b.shape;
    t.size = b.size;
    const Region* region = span_of[i] < 0 ? model.region.get() : regions[span_of[i]];
    t.offset = span_of[i] < 0 ? 0 : Addr(b.data) - Addr(region->data());
    model.tensor_regions.push_back(region->id());
    ranges.push_back(ByteRange{b.data, b.size});
    model.total_bytes += b.size;
  }
  bool on_device = false;
  for (const MemorySpan& span : set.spans) on_device = on_device || span.device >= 0;
  if (!on_device) {
    model.checksums = ChecksumRanges(ranges, threads);
    return model;
  }
  // Device memory is checksummed where it lies, with the tree checksum (its leaves are the
  // kernel's parallel work); host buffers of the same set get the same algorithm on the CPU.
  model.checksum_algorithm = ChecksumAlgorithm::kXxh3Tree64k;
  FERRY_ASSIGN_OR_RETURN(ChecksumFunction checksum,
                         SpanChecksum(set.spans, model.checksum_algorithm));
  for (const ByteRange& r : ranges) {
    FERRY_ASSIGN_OR_RETURN(uint64_t sum, checksum(r.data, r.size));
    model.checksums.push_back(sum);
  }
  return model;
}

}  // namespace ferry::weights
