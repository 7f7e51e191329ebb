// The native TCP transport's wire format. Every connection starts with a Hello from the
// target and a HelloReply from the source; then the target sends ReadRequests and the source
// answers each, in order, with a ReadReply followed (when status is kOk) by exactly `length`
// bytes of region memory. Integers are little-endian (checked at compile time: ferry only
// builds for little-endian hosts), structs are fixed-size with explicit padding.
#ifndef FERRY_TRANSFER_TCP_TCP_WIRE_H_
#define FERRY_TRANSFER_TCP_TCP_WIRE_H_

#include <bit>
#include <cstdint>

namespace ferry::internal::tcp {

static_assert(std::endian::native == std::endian::little, "the TCP wire format is little-endian");

constexpr uint32_t kMagic = 0x59525246;  // "FRRY"
constexpr uint32_t kProtocolVersion = 1;
constexpr int kSecretBytes = 32;
// The largest request a source accepts (TransferEngineOptions.chunk_bytes' upper bound).
constexpr uint64_t kMaxRequestBytes = 1ull << 30;

struct Hello {
  uint32_t magic;
  uint32_t version;
  uint8_t secret[kSecretBytes];
};
static_assert(sizeof(Hello) == 40);

enum class HelloStatus : uint32_t { kOk = 0, kBadSecret = 1, kBadVersion = 2, kBadMagic = 3 };

struct HelloReply {
  uint32_t magic;
  uint32_t status;  // HelloStatus
};
static_assert(sizeof(HelloReply) == 8);

struct ReadRequest {
  uint64_t request_id;
  uint32_t region;
  uint32_t reserved;  // 0
  uint64_t offset;
  uint64_t length;  // 1..kMaxRequestBytes
};
static_assert(sizeof(ReadRequest) == 32);

enum class ReplyStatus : uint32_t {
  kOk = 0,
  kNoSuchRegion = 1,  // never registered, or removed
  kOutOfRange = 2,    // offset + length past the region's end
  kTooLong = 3,       // length 0 or above kMaxRequestBytes
  kNotServed = 4,     // the source does not serve this range yet (not verified while it pulls)
};

struct ReadReply {
  uint64_t request_id;
  uint32_t status;  // ReplyStatus
  uint32_t reserved;
  uint64_t length;  // bytes that follow (the request's length when kOk, else 0)
};
static_assert(sizeof(ReadReply) == 24);

}  // namespace ferry::internal::tcp

#endif  // FERRY_TRANSFER_TCP_TCP_WIRE_H_
