// Reading a PEM file named by an option (TLS certificates, keys and CAs of the server, the
// clients and the worker endpoint). Not part of the installed API.
#ifndef FERRY_COMMON_PEM_FILE_H_
#define FERRY_COMMON_PEM_FILE_H_

#include <string>

#include "absl/strings/string_view.h"
#include "ferry/status.h"

namespace ferry::internal {

// The contents of a PEM file. InvalidArgument naming `what` (the option) and `path` if it cannot
// be read or holds no "-----BEGIN " block.
StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view what);

}  // namespace ferry::internal

#endif  // FERRY_COMMON_PEM_FILE_H_
