// How a serving process stops: SIGTERM or SIGINT, received by one sigwait in the main thread.
// Shared by the ferry command and the test-only sources (tests/tools/), which serve the same way.
#ifndef FERRY_COMMON_STOP_SIGNALS_H_
#define FERRY_COMMON_STOP_SIGNALS_H_

namespace ferry::internal {

// Blocks SIGTERM and SIGINT in the calling thread and in every thread started after it, so that
// only WaitForStopSignal receives them. Call first, before any thread exists.
void BlockStopSignals();

// Waits (sigwait) for SIGTERM or SIGINT, blocked by BlockStopSignals; returns "SIGTERM" or
// "SIGINT".
const char* WaitForStopSignal();

}  // namespace ferry::internal

#endif  // FERRY_COMMON_STOP_SIGNALS_H_
