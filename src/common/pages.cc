#include "common/pages.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace ferry {
namespace {

uint64_t PageSize() {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

// Whether this kernel has MADV_POPULATE_WRITE: asked once, on a page of our own.
bool PopulateWriteSupported() {
  static const bool supported = [] {
    void* p =
        ::mmap(nullptr, PageSize(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    const bool ok = ::madvise(p, PageSize(), MADV_POPULATE_WRITE) == 0;
    ::munmap(p, PageSize());
    return ok;
  }();
  return supported;
}

}  // namespace

Status FaultInForWriting(void* data, uint64_t size) {
  if (size == 0) return absl::OkStatus();
  // Whole pages; madvise needs a page-aligned start.
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) & ~(PageSize() - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(data) + size;
  if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE) == 0) {
    return absl::OkStatus();
  }
  const int error = errno;
  if (error == EINVAL && PopulateWriteSupported()) {
    // The kernel has it and refused this range: touching it would crash the process.
    return absl::FailedPreconditionError("the memory is not writable");
  }
  if (error == EINVAL) {  // kernels before 5.14
    for (uintptr_t p = begin; p < end; p += PageSize()) {
      reinterpret_cast<volatile char*>(p)[0] = reinterpret_cast<volatile char*>(p)[0];
    }
    return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("faulting in ", end - begin, " bytes failed: ", std::strerror(error)));
}

}  // namespace ferry
