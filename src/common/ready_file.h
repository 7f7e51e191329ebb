// The ready file: a process that serves (ferry-server, ferry publish, ferry artifact publish)
// says "I am ready, here is where" by writing one JSON object to the path its --ready-file flag
// names, e.g. {"grpc_port": 8001, "admin_port": 9401} or {"pid": ..., "worker_endpoint":
// "10.0.0.5:41234", "worker_port": 41234, ...}. The file appears whole or not at all (written
// beside, then renamed), so a reader never sees half an object. This is the one writer and the
// one reader; ChildProcess::WaitForReadyFile polls the reader while it watches the child.
#ifndef FERRY_COMMON_READY_FILE_H_
#define FERRY_COMMON_READY_FILE_H_

#include <optional>
#include <string>
#include <string_view>

#include "ferry/status.h"
#include "nlohmann/json.hpp"

namespace ferry::internal {

// Writes `fields` (an object) to `path` atomically: "<path>.tmp", then rename. InvalidArgument
// naming the path and the cause (usually a missing or read-only directory) on failure; no
// temporary file is left behind.
Status WriteReadyFile(const std::string& path, const nlohmann::json& fields);

// The object in `path` once it is there and has the integer field `key` (a port); nullopt while
// the file is missing, unreadable, not JSON or lacks the field, so that callers poll.
std::optional<nlohmann::json> ReadReadyFile(const std::string& path, std::string_view key);

}  // namespace ferry::internal

#endif  // FERRY_COMMON_READY_FILE_H_
