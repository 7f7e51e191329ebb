// ferry demo: ferry's main job in one command. Starts a ferry-server (unless --server names
// one), writes a Llama-shaped bf16 safetensors model, starts a `ferry publish` process that
// serves it and a `ferry pull` process that reads it peer to peer over loopback, checks that the
// pulled file is byte-identical, and reports the transfer beside two baselines measured in the
// same run: memcpy between prepared buffers, and reading the same file from the page cache
// into fresh memory. Every step checks its outcome, so exit status 0 means the pull worked.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cli/p2p_flags.h"
#include "common/byte_size.h"
#include "common/child_process.h"
#include "common/fd.h"
#include "common/server_process.h"
#include "nlohmann/json.hpp"
#include "weights/llama_model.h"
#include "weights/safetensors.h"

namespace ferry::cli {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kDemoSeed = 20261121;

struct DemoFlags {
  std::string size = "1GiB";
  std::string transport = "auto";
  std::string device = "cpu";
  bool json = false;
  bool keep = false;
};

// Pre-faulted anonymous memory, unmapped on destruction.
class Buffer {
 public:
  static StatusOr<Buffer> Map(uint64_t size, bool populate) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0), -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("mmap of ", size, " bytes failed: ", std::strerror(errno)));
    }
    return Buffer(static_cast<uint8_t*>(p), size);
  }
  Buffer(Buffer&& o) : data_(std::exchange(o.data_, nullptr)), size_(o.size_) {}
  ~Buffer() {
    if (data_ != nullptr) munmap(data_, size_);
  }
  uint8_t* data() const { return data_; }

 private:
  Buffer(uint8_t* data, uint64_t size) : data_(data), size_(size) {}
  uint8_t* data_;
  uint64_t size_;
};

struct Baselines {
  double memcpy_gbps = 0;      // best of 3, between pre-faulted buffers
  double page_cache_gbps = 0;  // read() of the cached file into fresh (untouched) memory
};

StatusOr<Baselines> MeasureBaselines(const std::string& path, uint64_t bytes) {
  Baselines b;
  {
    FERRY_ASSIGN_OR_RETURN(Buffer src, Buffer::Map(bytes, true));
    FERRY_ASSIGN_OR_RETURN(Buffer dst, Buffer::Map(bytes, true));
    std::memset(src.data(), 0x5a, bytes);
    for (int i = 0; i < 3; ++i) {
      const absl::Time t0 = absl::Now();
      std::memcpy(dst.data(), src.data(), bytes);
      const double s = absl::ToDoubleSeconds(absl::Now() - t0);
      b.memcpy_gbps = std::max(b.memcpy_gbps, bytes / s / 1e9);
    }
  }
  const internal::Fd owned_fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!owned_fd.valid()) return absl::UnavailableError(absl::StrCat("cannot open ", path));
  const int fd = owned_fd.get();
  const uint64_t file_size = fs::file_size(path);
  FERRY_ASSIGN_OR_RETURN(Buffer fresh, Buffer::Map(file_size, false));
  const absl::Time t0 = absl::Now();
  uint64_t done = 0;
  while (done < file_size) {
    const ssize_t n = pread(fd, fresh.data() + done, std::min<uint64_t>(file_size - done, 64 << 20),
                            static_cast<off_t>(done));
    if (n <= 0) return absl::UnavailableError(absl::StrCat("reading ", path, " failed"));
    done += static_cast<uint64_t>(n);
  }
  b.page_cache_gbps = file_size / absl::ToDoubleSeconds(absl::Now() - t0) / 1e9;
  return b;
}

// OK when the two files have the same bytes.
Status CompareFiles(const std::string& a, const std::string& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  if (!fa || !fb) return absl::InternalError(absl::StrCat("cannot open ", a, " or ", b));
  std::vector<char> ba(16 << 20), bb(16 << 20);
  uint64_t offset = 0;
  while (true) {
    fa.read(ba.data(), ba.size());
    fb.read(bb.data(), bb.size());
    if (fa.gcount() != fb.gcount()) {
      return absl::InternalError(absl::StrCat(b, " and ", a, " differ in length"));
    }
    if (std::memcmp(ba.data(), bb.data(), fa.gcount()) != 0) {
      return absl::InternalError(absl::StrCat(b, " differs from ", a, " within bytes ", offset,
                                              "..", offset + fa.gcount()));
    }
    offset += fa.gcount();
    if (fa.gcount() < static_cast<std::streamsize>(ba.size())) return absl::OkStatus();
  }
}

std::string SelfBinary() {
  std::error_code ec;
  return fs::read_symlink("/proc/self/exe", ec).string();
}

class Demo {
 public:
  Demo(const GlobalFlags& flags, const DemoFlags& demo) : flags_(flags), demo_(demo) {}

  Status Run() {
    if (!demo_.json) {
      std::cout << "ferry demo: pull a model peer to peer through a ferry-server.\n\n";
    }
    std::string dir_template = (fs::temp_directory_path() / "ferry-demo-XXXXXX").string();
    if (mkdtemp(dir_template.data()) == nullptr) {
      return absl::UnavailableError(absl::StrCat("cannot create a temporary folder ", dir_template,
                                                 ": ", std::strerror(errno)));
    }
    dir_ = dir_template;
    Status s = Steps();
    if (publisher_ != nullptr && publisher_->pid() > 0) {
      Status stopped = publisher_->Terminate(absl::Seconds(20));
      if (s.ok() && stopped.ok()) {
        Step("Stopped the publisher (SIGTERM): it marked its worker STALE and exited 0");
      }
      if (s.ok()) s = stopped;
    }
    if (server_ != nullptr) {
      Status stopped = server_->Stop();
      if (s.ok() && stopped.ok()) Step("Stopped the embedded ferry-server");
      if (s.ok()) s = stopped;
    }
    if (!demo_.keep) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    } else {
      Step(absl::StrCat("Kept the model, the pulled copy and the logs in ", dir_));
    }
    if (s.ok() && demo_.json) std::cout << summary_.dump(2) << std::endl;
    if (s.ok() && !demo_.json) std::cout << "\nDemo complete.\n";
    return s;
  }

 private:
  void Step(absl::string_view text) {
    if (!demo_.json) std::cout << "[" << ++step_ << "] " << text << std::endl;
  }

  // The embedded server needs no credentials: settings in the environment meant for another
  // server must not reach the children.
  std::vector<std::string> EnvRemove() const {
    if (server_ == nullptr) return {};
    return {"FERRY_SERVER",          "MX_SERVER_ADDRESS",   "FERRY_TOKEN",
            "FERRY_TOKEN_FILE",      "MX_AUTH_TOKEN_PATH",  "FERRY_TLS_CA",
            "FERRY_TLS_CLIENT_CERT", "FERRY_TLS_CLIENT_KEY"};
  }

  // --server and the credential flags, for the child processes.
  std::vector<std::string> ServerArgs() const {
    std::vector<std::string> args = {"--server", address_};
    if (server_ != nullptr) return args;  // the embedded server needs no credentials
    const ClientCredentials& c = flags_.credentials;
    if (c.tls) args.push_back("--tls");
    for (const auto& [flag, value] :
         {std::pair{"--token-file", &c.token_file}, std::pair{"--tls-ca", &c.tls_ca_file},
          std::pair{"--tls-cert", &c.tls_cert_file}, std::pair{"--tls-key", &c.tls_key_file},
          std::pair{"--tls-server-name", &c.tls_server_name}}) {
      if (!value->empty()) args.insert(args.end(), {flag, *value});
    }
    return args;
  }

  std::vector<std::string> IdentityArgs() const {
    return {"--model", model_name_, "--framework", "vllm",       "--tp",
            "1",       "--dtype",   "bfloat16",    "--revision", "main"};
  }

  Status Steps() {
    FERRY_ASSIGN_OR_RETURN(const uint64_t size, internal::ParseByteSize(demo_.size, "--size"));
    FERRY_RETURN_IF_ERROR(ParseTransportKind(demo_.transport).status());
    FERRY_ASSIGN_OR_RETURN(const int device, ParseDeviceFlag(demo_.device));
    if (flags_.server.has_value() && !flags_.server->empty()) {
      address_ = *flags_.server;
      Step(absl::StrCat("Using the server given by --server: ", address_));
    } else {
      StatusOr<std::string> binary = internal::SiblingBinary("ferry-server");
      if (!binary.ok()) {
        return Status(binary.status().code(), absl::StrCat(binary.status().message(),
                                                           "; or pass --server ADDR to use a "
                                                           "running server"));
      }
      internal::ServerProcessOptions options;
      options.binary = *binary;
      FERRY_ASSIGN_OR_RETURN(server_, internal::ServerProcess::Create(options));
      address_ = server_->address();
      Step(absl::StrCat("Started an embedded ferry-server on ", address_, " (pid ", server_->pid(),
                        ", memory store)"));
    }

    // The model.
    FERRY_ASSIGN_OR_RETURN(weights::LlamaConfig config, weights::ChooseLlamaConfig(size));
    const std::string model_path = dir_ + "/model.safetensors";
    absl::Time t0 = absl::Now();
    FERRY_RETURN_IF_ERROR(weights::WriteLlamaModel(model_path, size, kDemoSeed));
    FERRY_ASSIGN_OR_RETURN(weights::SafetensorsLayout layout,
                           weights::ReadSafetensorsLayout(model_path));
    model_name_ = absl::StrCat("demo/llama-", layout.data_size >> 20, "m");
    Step(absl::StrFormat(
        "Wrote a Llama-shaped bf16 model: %d tensors, %s (hidden %d, %d layers, vocab %d) "
        "in %.2f s\n    %s",
        layout.tensors.size(), FormatBytes(layout.data_size), config.hidden_size, config.num_layers,
        config.vocab_size, absl::ToDoubleSeconds(absl::Now() - t0), model_path));

    // Baselines, before any ferry process runs.
    FERRY_ASSIGN_OR_RETURN(Baselines base, MeasureBaselines(model_path, layout.data_size));
    Step(absl::StrFormat(
        "Baselines on this machine: memcpy between prepared buffers %.2f GB/s; reading the "
        "file from the page cache into fresh memory %.2f GB/s",
        base.memcpy_gbps, base.page_cache_gbps));

    // The source.
    const std::string self = SelfBinary();
    const std::string ready_file = dir_ + "/publish.ready";
    internal::ChildOptions publish;
    publish.argv = {self, "publish", model_path};
    for (const std::string& a : IdentityArgs()) publish.argv.push_back(a);
    for (const std::string& a : ServerArgs()) publish.argv.push_back(a);
    for (const std::string& a :
         {std::string("--transport"), demo_.transport, std::string("--data-listen"),
          std::string("127.0.0.1:0"), std::string("--worker-listen"), std::string("127.0.0.1:0"),
          std::string("--ready-file"), ready_file, std::string("--ucx-net-devices"),
          std::string("lo"), std::string("--device"), demo_.device}) {
      publish.argv.push_back(a);
    }
    if (device >= 0) {
      // Checksums the GPU target verifies where the bytes land.
      publish.argv.push_back("--checksum");
      publish.argv.push_back("xxh3-64-tree-64k");
    }
    publish.log_file = dir_ + "/publish.log";
    publish.env_remove = EnvRemove();
    t0 = absl::Now();
    FERRY_ASSIGN_OR_RETURN(publisher_, internal::ChildProcess::Start(publish));
    FERRY_ASSIGN_OR_RETURN(nlohmann::json ready, publisher_->WaitForReadyFile(
                                                     ready_file, "worker_port", absl::Minutes(5)));
    Step(absl::StrFormat(
        "Started `ferry publish` (pid %d): loaded the file into one registered arena, "
        "checksummed %d tensors and published worker %s (READY) in %.2f s",
        publisher_->pid(), ready["tensors"].get<uint64_t>(), ready["worker_id"].get<std::string>(),
        absl::ToDoubleSeconds(absl::Now() - t0)));

    // The target.
    const std::string out_path = dir_ + "/pulled.safetensors";
    internal::ChildOptions pull;
    pull.argv = {self,
                 "pull",
                 "-o",
                 out_path,
                 "--json",
                 "--transport",
                 demo_.transport,
                 "--data-listen",
                 "127.0.0.1:0",
                 "--ucx-net-devices",
                 "lo",
                 "--device",
                 demo_.device};
    for (const std::string& a : IdentityArgs()) pull.argv.push_back(a);
    for (const std::string& a : ServerArgs()) pull.argv.push_back(a);
    pull.log_file = dir_ + "/pull.log";
    pull.env_remove = EnvRemove();
    pull.stdout_file = dir_ + "/pull.json";
    t0 = absl::Now();
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<internal::ChildProcess> puller,
                           internal::ChildProcess::Start(pull));
    FERRY_RETURN_IF_ERROR(puller->Wait(absl::Minutes(10)));
    const double pull_process_seconds = absl::ToDoubleSeconds(absl::Now() - t0);
    std::ifstream in(pull.stdout_file);
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::json result = nlohmann::json::parse(text.str(), nullptr, false);
    if (!result.is_object() || !result.contains("bytes")) {
      return absl::InternalError(absl::StrCat("`ferry pull --json` printed no summary:\n",
                                              text.str(), "\nits log ends with:\n",
                                              puller->LogTail()));
    }
    FERRY_RETURN_IF_ERROR(CompareFiles(model_path, out_path));
    const double transfer = result["transfer_seconds"].get<double>();
    const double gbps = result["gbps"].get<double>();
    Step(absl::StrFormat(
        "`ferry pull` read %d tensors (%s) from worker %s over %s and verified every %s "
        "checksum%s;\n    the written file is byte-identical to the model",
        result["tensors"].get<uint64_t>(), FormatBytes(result["bytes"].get<uint64_t>()),
        result["source"]["worker_id"].get<std::string>(), result["path"].get<std::string>(),
        result["checksum"].get<std::string>(),
        device >= 0 ? absl::StrCat(" in the memory of ", demo_.device) : std::string()));
    Step(absl::StrFormat(
        "Transfer %.3f s = %.2f GB/s: %.2fx memcpy, %.2fx reading the file from the page cache\n"
        "    pull total %.3f s (discovery, connect, destination prepare, transfer, verify); "
        "process with file write %.2f s",
        transfer, gbps, gbps / base.memcpy_gbps, gbps / base.page_cache_gbps,
        result["seconds"].get<double>(), pull_process_seconds));
    summary_ = {{"bytes", result["bytes"]},
                {"tensors", result["tensors"]},
                {"transport", result["transport"]},
                {"path", result["path"]},
                {"device", demo_.device},
                {"transfer_seconds", transfer},
                {"pull_seconds", result["seconds"]},
                {"pull_process_seconds", pull_process_seconds},
                {"gbps", gbps},
                {"verified", result["verified"]},
                {"identical_file", true},
                {"baseline_memcpy_gbps", base.memcpy_gbps},
                {"baseline_page_cache_gbps", base.page_cache_gbps},
                {"ratio_to_memcpy", gbps / base.memcpy_gbps},
                {"ratio_to_page_cache", gbps / base.page_cache_gbps},
                {"model", model_name_}};
    return absl::OkStatus();
  }

  const GlobalFlags& flags_;
  const DemoFlags& demo_;
  std::string dir_;
  std::string address_;
  std::string model_name_;
  std::unique_ptr<internal::ServerProcess> server_;
  std::unique_ptr<internal::ChildProcess> publisher_;
  nlohmann::json summary_;
  int step_ = 0;
};

}  // namespace

void AddDemoCommand(CLI::App& app, Cli& cli) {
  auto flags = std::make_shared<DemoFlags>();
  CLI::App* cmd = app.add_subcommand(
      "demo",
      "Pull a model peer to peer: start a ferry-server (memory store) on loopback, write a\n"
      "Llama-shaped bf16 safetensors model (--size), start `ferry publish` serving it and\n"
      "`ferry pull` reading it, check the pulled file is identical, and report the transfer\n"
      "rate beside memcpy and a page-cache file read measured in the same run.\n"
      "Without --server it starts the ferry-server next to this executable and stops it at\n"
      "the end; with --server it uses that one (with the token and TLS flags).");
  cmd->add_option("--size", flags->size, "approximate model size: bytes, or 64MiB, 1GiB, ...")
      ->capture_default_str();
  cmd->add_option("--transport", flags->transport, "auto, cuda_ipc, shm, ucx or tcp")
      ->check(CLI::IsMember({"auto", "cuda_ipc", "shm", "ucx", "tcp"}))
      ->capture_default_str();
  cmd->add_option("--device", flags->device,
                  "where both sides hold the weights: cpu, or cuda:N (GPU N's memory, verified on "
                  "the GPU; needs a GPU and its driver)")
      ->capture_default_str();
  cmd->add_flag("--json", flags->json, "print only a JSON summary");
  cmd->add_flag("--keep", flags->keep, "keep the temporary folder (model, pulled copy, logs)");
  cmd->callback(
      [&cli, flags] { cli.action = [&cli, flags] { return Demo(cli.flags, *flags).Run(); }; });
}

}  // namespace ferry::cli
