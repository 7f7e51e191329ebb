// Shared by the bench/ programs: the simulated fleet. Worker i is rank i % 8 of source i / 8,
// as 8-GPU sources publish, with its own 8-hex worker_id; what it publishes is what the
// ModelExpress client sends in P2P mode (endpoints only, status and updated_at unset).
#ifndef FERRY_BENCH_BENCH_POPULATION_H_
#define FERRY_BENCH_BENCH_POPULATION_H_

#include <cstdint>
#include <string>

#include "model_express/p2p.pb.h"

namespace ferry::bench {

constexpr int kRanksPerSource = 8;

// Worker i's worker_id: a bijection on 32 bits, so ids are distinct but not sequential (the
// client's are random).
std::string WorkerId(int64_t i);

// A vLLM bfloat16 weights identity of `model_name` with tensor_parallel_size 8.
::model_express::p2p::SourceIdentity Identity(const std::string& model_name);

// Worker i's PublishMetadata in P2P mode under `identity`: rank i % 8, endpoints derived from i.
::model_express::p2p::PublishMetadataRequest EndpointPublish(
    const ::model_express::p2p::SourceIdentity& identity, int64_t i);

}  // namespace ferry::bench

#endif  // FERRY_BENCH_BENCH_POPULATION_H_
