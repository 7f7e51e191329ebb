#include "common/ready_file.h"

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/fd.h"

namespace ferry::internal {

Status WriteReadyFile(const std::string& path, const nlohmann::json& fields) {
  const std::string tmp = path + ".tmp";
  const std::string text = fields.dump() + "\n";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write the ready file ", tmp, ": ",
                                                   ErrnoText(errno),
                                                   "; check that its directory exists and is "
                                                   "writable"));
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const int write_errno = errno;
  if (std::fclose(f) != 0 || !written) {
    const int err = written ? errno : write_errno;
    std::remove(tmp.c_str());
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write the ready file ", tmp, ": ", ErrnoText(err)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::InvalidArgumentError(
        absl::StrCat("cannot rename the ready file ", tmp, " to ", path, ": ", ErrnoText(err)));
  }
  return absl::OkStatus();
}

std::optional<nlohmann::json> ReadReadyFile(const std::string& path, std::string_view key) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json ready = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  const std::string k(key);
  if (!ready.is_object() || !ready.contains(k) || !ready[k].is_number_integer()) {
    return std::nullopt;
  }
  return ready;
}

}  // namespace ferry::internal
