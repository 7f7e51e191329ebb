// CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF,
// the checksum of ModelExpress artifact manifests (contract 4.1 step 7).
#ifndef FERRY_ARTIFACTS_CRC32C_H_
#define FERRY_ARTIFACTS_CRC32C_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace ferry::artifacts {

// Returns the CRC-32C of `data[0, size)` continued from `crc`, the CRC-32C of the bytes before
// it (0 for none). Extendable: Crc32c(b, nb, Crc32c(a, na)) == Crc32c(a followed by b).
// Uses the SSE4.2 instruction when the CPU has it, otherwise the portable tables. Thread-safe.
// REQUIRES: data is readable for `size` bytes (any alignment; may be null when size is 0).
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

// The two implementations behind Crc32c, exposed so tests and benchmarks can compare them.
// Both give identical results for every input.
uint32_t Crc32cPortable(const void* data, size_t size, uint32_t crc = 0);
// REQUIRES: Crc32cHardwareAvailable().
uint32_t Crc32cHardware(const void* data, size_t size, uint32_t crc = 0);
// True when this CPU has the SSE4.2 crc32 instruction (always false off x86-64).
bool Crc32cHardwareAvailable();

// `crc` as 8 lowercase hex digits, zero-padded, most significant first: the manifest format
// (Crc32cHex(0xe3069283) == "e3069283").
std::string Crc32cHex(uint32_t crc);

}  // namespace ferry::artifacts

#endif  // FERRY_ARTIFACTS_CRC32C_H_
