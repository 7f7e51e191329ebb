// ferry demo: the whole control-plane round trip in one command. Starts a ferry-server (unless
// --server names one), publishes a small fake model with a Publisher, discovers it, reads its
// metadata, retires it, and stops the server. Every step checks its outcome, so a zero exit
// status means the round trip worked.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/cli.h"
#include "cli/embedded_server.h"
#include "ferry/publisher.h"

namespace ferry::cli {

namespace p2p = ::model_express::p2p;

namespace {

constexpr char kDemoModel[] = "demo/tiny-llama";
constexpr absl::Duration kDemoHeartbeat = absl::Milliseconds(500);

SourceIdentity DemoIdentity() {
  SourceIdentity id;
  id.set_model_name(kDemoModel);
  id.set_mx_source_type(p2p::MX_SOURCE_TYPE_WEIGHTS);
  id.set_backend_framework(p2p::BACKEND_FRAMEWORK_VLLM);
  id.set_tensor_parallel_size(1);
  id.set_pipeline_parallel_size(1);
  id.set_dtype("bfloat16");
  id.set_revision("main");
  return id;
}

// Rank 0 of a tiny Llama: three tensors at made-up device addresses.
WorkerMetadata DemoWorker() {
  WorkerMetadata w;
  w.set_worker_rank(0);
  w.set_metadata_endpoint("127.0.0.1:5555");
  w.set_agent_name("demo-agent-0");
  w.set_worker_grpc_endpoint("127.0.0.1:6555");
  w.set_accelerator("cuda");
  struct Fake {
    const char* name;
    uint64_t elements;
  };
  uint64_t addr = 0x7f0000000000;
  for (const Fake& f : {Fake{"model.embed_tokens.weight", 32000ull * 2048},
                        Fake{"model.layers.0.self_attn.qkv_proj.weight", 2048ull * 6144},
                        Fake{"lm_head.weight", 32000ull * 2048}}) {
    TensorDescriptor* t = w.mutable_tensor_source()->add_tensors();
    t->set_name(f.name);
    t->set_addr(addr);
    t->set_size(f.elements * 2);
    t->set_device_id(0);
    t->set_dtype("torch.bfloat16");
    addr += (f.elements * 2 + 0xfffff) & ~uint64_t{0xfffff};
  }
  return w;
}

class Demo {
 public:
  explicit Demo(const GlobalFlags& flags) : flags_(flags) {}

  Status Run() {
    std::cout << "ferry demo: publish a model, discover it, read its metadata, "
                 "retire it.\n\n";
    Status s = Steps();
    if (server_ != nullptr) {
      // Stop the server whether or not the steps worked; report the first failure.
      Status stopped = server_->Stop();
      if (s.ok() && stopped.ok()) {
        Step("Stopped the embedded ferry-server (SIGTERM, exit status 0)");
      }
      if (s.ok()) s = stopped;
    }
    if (s.ok()) std::cout << "\nDemo complete.\n";
    return s;
  }

 private:
  void Step(absl::string_view text) { std::cout << "[" << ++step_ << "] " << text << "\n"; }

  static Status Check(bool ok, absl::string_view what) {
    if (ok) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("demo check failed: ", what));
  }

  ListSourcesRequest ReadyRequest() const {
    ListSourcesRequest request;
    *request.mutable_identity() = DemoIdentity();
    request.set_status_filter(p2p::SOURCE_STATUS_READY);
    return request;
  }

  static bool Contains(const std::vector<SourceInstanceRef>& refs, const Publisher& publisher) {
    for (const SourceInstanceRef& r : refs) {
      if (r.mx_source_id() == publisher.mx_source_id() && r.worker_id() == publisher.worker_id()) {
        return true;
      }
    }
    return false;
  }

  Status Steps() {
    std::string address;
    if (flags_.server.has_value() && !flags_.server->empty()) {
      address = *flags_.server;
      Step(absl::StrCat("Using the server given by --server: ", address));
    } else {
      FERRY_ASSIGN_OR_RETURN(std::string binary, ServerBinaryNextToSelf());
      EmbeddedServerOptions options;
      options.server_binary = binary;
      FERRY_ASSIGN_OR_RETURN(server_, EmbeddedServer::Create(options));
      address = server_->address();
      Step(absl::StrCat("Started an embedded ferry-server on ", address, " (pid ", server_->pid(),
                        ", memory store)"));
    }
    // The embedded server runs without TLS or tokens; a --server one gets the credential flags.
    FERRY_ASSIGN_OR_RETURN(
        std::unique_ptr<MetadataClient> client,
        server_ ? ConnectClientTo(address, "the embedded server", /*credentials=*/nullptr)
                : ConnectClientTo(address, "--server", &flags_));

    FERRY_ASSIGN_OR_RETURN(HealthInfo health, client->Health());
    Step(absl::StrCat("Health: ", health.status, ", version ", health.version, ", up ",
                      health.uptime_seconds, "s"));

    PublisherOptions popts;
    popts.client = client.get();
    popts.identity = DemoIdentity();
    popts.worker = DemoWorker();
    popts.heartbeat_interval = kDemoHeartbeat;
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Publisher> publisher,
                           Publisher::Create(std::move(popts)));
    FERRY_RETURN_IF_ERROR(publisher->Start());
    Step(absl::StrCat("Published ", kDemoModel,
                      " (vLLM, tp=1, bfloat16) and marked it READY\n"
                      "    mx_source_id ",
                      publisher->mx_source_id(), "  worker_id ", publisher->worker_id(),
                      "  rank 0  3 tensors\n", "    heartbeat every ",
                      absl::FormatDuration(kDemoHeartbeat)));

    FERRY_ASSIGN_OR_RETURN(std::vector<SourceInstanceRef> ready,
                           client->ListSources(ReadyRequest()));
    FERRY_RETURN_IF_ERROR(
        Check(Contains(ready, *publisher), "the published worker is not listed as READY"));
    Step(absl::StrCat("ListSources(identity, status=READY) finds ", ready.size(),
                      ready.size() == 1 ? " worker:" : " workers:"));
    std::cout << FormatSourcesTable(ready, absl::Now(), "    ");

    FERRY_ASSIGN_OR_RETURN(GetMetadataResponse before,
                           client->GetMetadata(publisher->mx_source_id(), publisher->worker_id()));
    FERRY_RETURN_IF_ERROR(Check(before.worker().status() == p2p::SOURCE_STATUS_READY,
                                "GetMetadata does not report READY"));
    Step("GetMetadata(mx_source_id, worker_id):");
    std::cout << FormatMetadata(before, absl::Now(), "    ");

    // Let the heartbeat thread refresh the record once.
    const absl::Time deadline = absl::Now() + 10 * kDemoHeartbeat;
    while (publisher->heartbeat_count() < 1 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    FERRY_ASSIGN_OR_RETURN(GetMetadataResponse after,
                           client->GetMetadata(publisher->mx_source_id(), publisher->worker_id()));
    FERRY_RETURN_IF_ERROR(Check(publisher->heartbeat_count() >= 1 &&
                                    after.worker().updated_at() > before.worker().updated_at(),
                                "the heartbeat did not refresh updated_at"));
    Step(absl::StrCat("Heartbeat refreshed updated_at by ",
                      after.worker().updated_at() - before.worker().updated_at(), " ms (",
                      publisher->heartbeat_count(), " heartbeat",
                      publisher->heartbeat_count() == 1 ? "" : "s", ")"));

    publisher->Stop();
    FERRY_ASSIGN_OR_RETURN(GetMetadataResponse stale,
                           client->GetMetadata(publisher->mx_source_id(), publisher->worker_id()));
    FERRY_ASSIGN_OR_RETURN(ready, client->ListSources(ReadyRequest()));
    FERRY_RETURN_IF_ERROR(Check(stale.worker().status() == p2p::SOURCE_STATUS_STALE,
                                "the stopped worker is not STALE"));
    FERRY_RETURN_IF_ERROR(
        Check(!Contains(ready, *publisher), "the stopped worker is still listed as READY"));
    Step(absl::StrCat(
        "Stopped the publisher: the worker is now ", StatusName(stale.worker().status()),
        ", and ListSources(status=READY) no longer lists it (", ready.size(), " READY workers)"));
    return absl::OkStatus();
  }

  const GlobalFlags& flags_;
  std::unique_ptr<EmbeddedServer> server_;
  int step_ = 0;
};

}  // namespace

void AddDemoCommand(CLI::App& app, Cli& cli) {
  CLI::App* cmd = app.add_subcommand(
      "demo",
      "Run the control-plane round trip: publish a fake model (demo/tiny-llama),\n"
      "list READY sources, read the worker's metadata, see a heartbeat, stop the\n"
      "publisher (STALE) and check it is no longer listed.\n"
      "Without --server it starts the ferry-server next to this executable on\n"
      "loopback ports and stops it at the end (FERRY_SERVER is not used here, and\n"
      "neither are the token and TLS settings: the embedded server needs none).\n"
      "With --server it uses them as the other commands do.");
  cmd->callback([&cli] { cli.action = [&cli] { return Demo(cli.flags).Run(); }; });
}

}  // namespace ferry::cli
