#include "engines/turbomind.h"

#include <chrono>
#include <cstring>
#include <stdexcept>

#include "core/tables.h"
#include "engines/dlpack_abi.h"

namespace py = pybind11;

namespace cosyfast {
namespace {

// How long a round may wait for the engine before it is declared stuck.
constexpr auto kRoundTimeout = std::chrono::seconds(120);

// TurboMind's request status codes (its Request struct), as sentences.
std::string StatusText(int status) {
  switch (status) {
    case 1: return "session does not exist in the engine";
    case 2:
    case 3: return "session id already in use in the engine";
    case 4:
    case 5: return "internal engine error";
    case 6: return "input too long for the session (session_len)";
    case 8: return "request cancelled by the engine";
    case 9: return "prefix cache conflicts with interactive mode";
    case 10: return "no request queue (the engine is shutting down)";
    default: return "unknown status";
  }
}

constexpr int kStatusFinished = 7;

struct DlpackContext {
  dlpack::ManagedTensor managed;
  std::shared_ptr<void> storage;
  std::vector<int64_t> shape;
};

void DeleteContext(dlpack::ManagedTensor* self) { delete static_cast<DlpackContext*>(self->manager_ctx); }

void CapsuleDestructor(PyObject* capsule) {
  // Taken over (renamed "used_dltensor"): the consumer calls the deleter, not us.
  if (!PyCapsule_IsValid(capsule, dlpack::kCapsuleName)) return;
  auto* managed = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(capsule, dlpack::kCapsuleName));
  if (managed && managed->deleter) managed->deleter(managed);
}

template <typename T>
std::shared_ptr<std::vector<T>> Buffer(size_t n) {
  return std::make_shared<std::vector<T>>(n);
}

template <typename T>
py::object HostTensorOf(const std::shared_ptr<std::vector<T>>& buf, std::vector<int64_t> shape, uint8_t code) {
  return py::cast(std::make_shared<HostTensor>(buf, buf->data(), std::move(shape), code, sizeof(T) * 8));
}

}  // namespace

HostTensor::HostTensor(std::shared_ptr<void> storage, void* data, std::vector<int64_t> shape, uint8_t type_code,
                       uint8_t bits)
    : storage_(std::move(storage)), data_(data), shape_(std::move(shape)), code_(type_code), bits_(bits) {}

py::capsule HostTensor::ToDlpack() const {
  auto* ctx = new DlpackContext{};
  ctx->storage = storage_;
  ctx->shape = shape_;
  ctx->managed.dl_tensor = dlpack::Tensor{data_,
                                          dlpack::Device{dlpack::kCPU, 0},
                                          static_cast<int32_t>(ctx->shape.size()),
                                          dlpack::DataType{code_, bits_, 1},
                                          ctx->shape.data(),
                                          nullptr,
                                          0};
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = DeleteContext;
  return py::capsule(&ctx->managed, dlpack::kCapsuleName, CapsuleDestructor);
}

void TurboMindOptions::Validate() const {
  if (hidden_size <= 0) throw std::invalid_argument("turbomind: hidden_size must be > 0");
  if (vocab_size <= 0) throw std::invalid_argument("turbomind: vocab_size must be > 0");
  if (max_session_len <= 1) throw std::invalid_argument("turbomind: session_len must be > 1");
}

class TurboMindEngine::Signals {
 public:
  void Reset(size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    counts_.assign(n, 0);
    total_ = 0;
  }
  void Bump(size_t slot) {
    bool all_signalled;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (slot < counts_.size()) ++counts_[slot];
      all_signalled = ++total_ >= counts_.size();
    }
    // Waking the waiter before every slot has answered would only make it sleep again.
    if (all_signalled) cv_.notify_all();
  }
  // Blocks until every slot not yet done has a signal beyond `seen` (one wake-up per round in
  // the common case, not one per request: each wake-up costs a GIL hand-over); false on timeout.
  bool WaitForAll(const std::vector<uint64_t>& seen, const std::vector<char>& done) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, kRoundTimeout, [&] {
      for (size_t i = 0; i < counts_.size(); ++i) {
        if (!done[i] && counts_[i] <= seen[i]) return false;
      }
      return true;
    });
  }
  uint64_t Count(size_t slot) {
    std::lock_guard<std::mutex> lock(mutex_);
    return counts_[slot];
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<uint64_t> counts_;
  size_t total_ = 0;  // signals this round, all slots together
};

struct TurboMindEngine::Slot {
  int64_t session_id = 0;
  bool prefill = false;
  py::object outputs;  // TensorMap holding "logits"
  py::object state;    // AtomicRequestState
  int status = 0;
};

struct TurboMindEngine::Lane {
  std::shared_ptr<Signals> signals = std::make_shared<Signals>();
  std::vector<py::object> callbacks;  // callbacks[i] bumps signals for slot i
};

TurboMindEngine::TurboMindEngine(py::object tm_module, py::object model_comm, py::object gen_config, py::object owner,
                                 TurboMindOptions options)
    : tm_(std::move(tm_module)),
      model_comm_(std::move(model_comm)),
      gen_config_(std::move(gen_config)),
      owner_(std::move(owner)),
      options_(options) {
  options_.Validate();
  from_dlpack_ = tm_.attr("from_dlpack");
}

TurboMindEngine::~TurboMindEngine() {
  // py::objects die here, so the GIL is needed; end every cache still held.
  py::gil_scoped_acquire gil;
  for (auto& [id, live] : sessions_) {
    try {
      live.request.attr("end")(py::cpp_function([](int) {}), id);
    } catch (const std::exception&) {
    }
  }
  sessions_.clear();
  ending_.clear();
  idle_lanes_.clear();
  lanes_.clear();
  gen_config_ = py::object();
  from_dlpack_ = py::object();
  model_comm_ = py::object();
  tm_ = py::object();
  owner_ = py::object();
}

TurboMindEngine::Lane& TurboMindEngine::BorrowLane(size_t slots) {
  Lane* lane;
  if (idle_lanes_.empty()) {
    lanes_.push_back(std::make_unique<Lane>());
    lane = lanes_.back().get();
  } else {
    lane = idle_lanes_.back();
    idle_lanes_.pop_back();
  }
  while (lane->callbacks.size() < slots) {
    const size_t i = lane->callbacks.size();
    std::weak_ptr<Signals> weak = lane->signals;
    lane->callbacks.push_back(py::cpp_function([weak, i]() {
      if (auto s = weak.lock()) s->Bump(i);
    }));
  }
  lane->signals->Reset(slots);
  return *lane;
}

TurboMindEngine::Live& TurboMindEngine::Find(int64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) throw std::invalid_argument("turbomind: unknown session " + std::to_string(id));
  return it->second;
}

void TurboMindEngine::Submit(const EngineInput& input, Slot& slot, const py::object& callback) {
  const int64_t id = input.session_id;
  py::object tensors;
  int step = 0;
  Live* live = nullptr;
  if (input.prompt_rows) {
    // A prefill opens a session; an append (bistream text) continues one after its cache.
    if (input.append) {
      live = &Find(id);
      step = live->cached;
    } else if (sessions_.count(id)) {
      throw std::invalid_argument("turbomind: session " + std::to_string(id) + " already exists");
    }
    const int n = input.prompt_len;
    if (n < 1 || step + n >= options_.max_session_len) {
      throw std::invalid_argument("turbomind: " + std::to_string(n) + " rows after " + std::to_string(step) +
                                  " cached positions do not fit session_len " +
                                  std::to_string(options_.max_session_len));
    }
    const size_t h = static_cast<size_t>(options_.hidden_size);
    auto ids = Buffer<int32_t>(n);  // placeholders: every position is replaced by an embedding row
    auto rows = Buffer<uint16_t>(static_cast<size_t>(n) * h);
    for (size_t i = 0; i < rows->size(); ++i) (*rows)[i] = FloatToBFloat16(input.prompt_rows[i]);
    tensors = tm_.attr("TensorMap")();
    auto ranges = Buffer<int32_t>(2);
    (*ranges)[0] = 0;
    (*ranges)[1] = n;
    tensors.attr("__setitem__")("input_ids", from_dlpack_(HostTensorOf(ids, {n}, dlpack::kInt)));
    tensors.attr("__setitem__")("input_embeddings",
                                from_dlpack_(HostTensorOf(rows, {n, static_cast<int64_t>(h)}, dlpack::kBfloat)));
    tensors.attr("__setitem__")("input_embedding_ranges", from_dlpack_(HostTensorOf(ranges, {1, 2}, dlpack::kInt)));
    if (!input.append) {
      Live fresh;
      fresh.request = model_comm_.attr("create_request")();
      fresh.forward = fresh.request.attr("forward");
      fresh.session = tm_.attr("SessionParam")(py::arg("id") = id, py::arg("step") = 0, py::arg("start") = true,
                                               py::arg("end") = false);
      live = &sessions_.emplace(id, std::move(fresh)).first->second;
    }
  } else {
    live = &Find(id);
    if (input.token < 0 || input.token >= options_.vocab_size) {
      throw std::invalid_argument("turbomind: token " + std::to_string(input.token) + " is outside the vocabulary");
    }
    if (live->cached + 1 >= options_.max_session_len) {
      throw std::invalid_argument("turbomind: session " + std::to_string(id) + " would exceed session_len " +
                                  std::to_string(options_.max_session_len));
    }
    if (!live->step_ids) {
      // One input map per session, reused for every step: only the token in it changes, and the
      // previous request is finished before the next is submitted.
      live->step_ids = Buffer<int32_t>(1);
      live->step_tensors = tm_.attr("TensorMap")();
      live->step_tensors.attr("__setitem__")("input_ids", from_dlpack_(HostTensorOf(live->step_ids, {1}, dlpack::kInt)));
    }
    (*live->step_ids)[0] = input.token;
    tensors = live->step_tensors;
    step = live->cached;
  }
  const bool start = input.prompt_rows != nullptr && !input.append;
  // The binding copies the SessionParam into the request, so one object per session serves
  // every request (setting two fields costs less than building one from keywords).
  live->session.attr("step") = step;
  live->session.attr("start") = start;
  // forward(tensors, mm_inputs, session, gen_cfg, stream_output, enable_metrics, signal callback)
  py::tuple result = live->forward(tensors, py::none(), live->session, gen_config_, false, false, callback);
  slot.outputs = result[0];
  slot.state = result[1];
}

double TurboMindEngine::WaitAll(Lane& lane, std::vector<Slot>& slots) {
  using Clock = std::chrono::steady_clock;
  std::vector<uint64_t> seen(slots.size(), 0);
  std::vector<char> done(slots.size(), 0);
  size_t remaining = slots.size();
  double waited = 0;
  while (remaining > 0) {
    bool signalled;
    {
      const auto t0 = Clock::now();
      py::gil_scoped_release release;
      signalled = lane.signals->WaitForAll(seen, done);
      waited += std::chrono::duration<double>(Clock::now() - t0).count();
    }
    if (!signalled) throw std::runtime_error("turbomind: no answer from the engine within the round timeout");
    for (size_t i = 0; i < slots.size(); ++i) {
      if (done[i]) continue;
      const uint64_t c = lane.signals->Count(i);
      if (c == seen[i]) continue;
      seen[i] = c;
      py::object st = slots[i].state.attr("consume")();
      if (st.is_none()) continue;
      const int status = st.attr("status").cast<int>();
      if (status == 0) continue;  // progress, not the end
      slots[i].status = status;
      done[i] = 1;
      --remaining;
    }
  }
  return waited;
}

TurboMindEngine::LogitsRow TurboMindEngine::FindLogits(Slot& slot) const {
  LogitsRow row;
  py::object tensor = slot.outputs.attr("__getitem__")("logits");
  py::capsule capsule = tensor.attr("__dlpack__")();
  auto* managed = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), dlpack::kCapsuleName));
  if (!managed) throw std::runtime_error("turbomind: the logits output is not a DLPack tensor");
  const dlpack::Tensor& t = managed->dl_tensor;
  if (t.device.device_type != dlpack::kCPU && t.device.device_type != dlpack::kCUDAHost) {
    throw std::runtime_error("turbomind: logits are expected in host memory");
  }
  if (t.ndim < 1 || t.shape[t.ndim - 1] < options_.vocab_size) {
    throw std::runtime_error("turbomind: logits rows are narrower than the vocabulary");
  }
  if (t.dtype.code == dlpack::kFloat && t.dtype.bits == 32) {
    row.bf16 = false;
  } else if (t.dtype.code == dlpack::kBfloat && t.dtype.bits == 16) {
    row.bf16 = true;
  } else {
    throw std::runtime_error("turbomind: logits have an unexpected dtype (code " + std::to_string(t.dtype.code) +
                             ", " + std::to_string(t.dtype.bits) + " bits)");
  }
  row.data = static_cast<const char*>(t.data) + t.byte_offset;
  row.keep = std::move(capsule);
  return row;
}

void TurboMindEngine::CopyRow(const LogitsRow& row, float* out) const {
  const size_t v = static_cast<size_t>(options_.vocab_size);
  if (!row.bf16) {
    std::memcpy(out, row.data, v * sizeof(float));
    return;
  }
  const auto* b = reinterpret_cast<const uint16_t*>(row.data);
  for (size_t i = 0; i < v; ++i) out[i] = BFloat16ToFloat(b[i]);
}

void TurboMindEngine::Forward(std::span<const EngineInput> inputs, float* logits) {
  py::gil_scoped_acquire gil;
  std::erase_if(ending_, [](const Ending& e) { return e.done->load(); });
  std::vector<Slot> slots(inputs.size());
  Lane& lane = BorrowLane(inputs.size());
  // The lane goes back for reuse once every request it carried has answered; after a timeout a
  // late signal could still arrive, so then it is dropped instead.
  struct LaneReturn {
    std::vector<Lane*>& idle;
    Lane& lane;
    bool answered = false;
    ~LaneReturn() {
      if (answered) idle.push_back(&lane);
    }
  } lane_return{idle_lanes_, lane};
  using Clock = std::chrono::steady_clock;
  const auto t_start = Clock::now();
  size_t submitted = 0;
  try {
    for (size_t i = 0; i < inputs.size(); ++i) {
      Slot& slot = slots[i];
      slot.session_id = inputs[i].session_id;
      slot.prefill = inputs[i].prompt_rows != nullptr && !inputs[i].append;
      Submit(inputs[i], slot, lane.callbacks[i]);
      ++submitted;
    }
  } catch (...) {
    slots.resize(submitted);  // wait for what was submitted, so no callback outlives this round
    WaitAll(lane, slots);
    lane_return.answered = true;
    throw;
  }
  const auto t_submitted = Clock::now();
  const double waited = WaitAll(lane, slots);
  lane_return.answered = true;
  std::string errors;
  std::vector<LogitsRow> rows(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) {
    Live& live = sessions_.at(slots[i].session_id);
    if (slots[i].status != kStatusFinished) {
      errors += "session " + std::to_string(slots[i].session_id) + ": " + StatusText(slots[i].status) + " (status " +
                std::to_string(slots[i].status) + "); ";
      continue;
    }
    const EngineInput& in = inputs[i];
    live.cached = slots[i].prefill ? in.prompt_len : in.append ? live.cached + in.prompt_len : live.cached + 1;
    rows[i] = FindLogits(slots[i]);
  }
  {
    // Widening the rows to float needs no Python objects: other lanes may use the GIL meanwhile.
    py::gil_scoped_release release;
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i].data) CopyRow(rows[i], logits + i * static_cast<size_t>(options_.vocab_size));
    }
  }
  rows.clear();  // drops the DLPack capsules, with the GIL held
  profile_.rounds += 1;
  profile_.requests += static_cast<int64_t>(slots.size());
  profile_.wait_s += waited;
  profile_.submit_s += std::chrono::duration<double>(t_submitted - t_start).count();
  profile_.read_s += std::chrono::duration<double>(Clock::now() - t_submitted).count() - waited;
  if (!errors.empty()) throw std::runtime_error("turbomind: " + errors);
}

void TurboMindEngine::EndSession(int64_t session_id) {
  py::gil_scoped_acquire gil;
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  // The request object must outlive the engine's end callback, so it waits in ending_ until then
  // (dropping it inside its own callback would free it while the engine still runs that code).
  Ending ending{it->second.request, std::make_shared<std::atomic<bool>>(false)};
  sessions_.erase(it);
  std::weak_ptr<std::atomic<bool>> flag = ending.done;
  ending.request.attr("end")(py::cpp_function([flag](int) {
                               if (auto f = flag.lock()) f->store(true);
                             }),
                             session_id);
  ending_.push_back(std::move(ending));
}

}  // namespace cosyfast
