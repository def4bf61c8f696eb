// cosyfast: decode steps replayed from CUDA graphs (see cosyfast_decode_graph.h).
// Written for cosyfast (Apache-2.0); copied into lmdeploy's src/turbomind/models/llama/.
#include "src/turbomind/models/llama/cosyfast_decode_graph.h"

#include <algorithm>
#include <atomic>
#include <new>
#include <vector>

#include "src/turbomind/utils/cuda_utils.h"

namespace turbomind::cosyfast {

namespace {

std::atomic<int64_t> g_replayed{0};
std::atomic<int64_t> g_captured{0};
std::atomic<int64_t> g_eager{0};
std::atomic<int64_t> g_failed{0};

// Graphs one decoder keeps (each ~230 nodes); steps with a new key beyond it run eagerly.
constexpr size_t kMaxGraphs = 512;

}  // namespace

DecodeGraphCounts GetDecodeGraphCounts()
{
    return {g_replayed, g_captured, g_eager, g_failed};
}

int RoundKMax(int k_max, int session_len)
{
    int k = 64;
    while (k < k_max) {
        k *= 2;
    }
    return std::max(k_max, std::min(k, session_len));
}

// Where a capture's temporaries live: one device buffer handed out bottom-up, a block freed on
// top given back (the layers free their temporaries last-in first-out), the rest when the next
// capture begins. Only a capture allocates here (a graph keeps the addresses it was captured
// with, and graphs run one at a time on the engine's stream, so they may share it); outside a
// capture it refuses, so that nothing else can come to rely on it.
class DecodeGraphs::Arena: public core::AllocatorImpl {
public:
    Arena(void* base, ssize_t bytes): base_{base}, size_{bytes} {}
    ~Arena() override
    {
        cudaFree(base_);
    }

    void* allocate(ssize_t size) override
    {
        // at least one unit: blocks of size 0 would share an address with the next one
        const ssize_t n = std::max<ssize_t>(kAlignment, (size + kAlignment - 1) / kAlignment * kAlignment);
        if (!capturing_ || top_ + n > size_) {
            throw std::bad_alloc{};  // the capture fails and its key stays eager
        }
        blocks_.push_back(top_);
        void* p = static_cast<char*>(base_) + top_;
        top_ += n;
        return p;
    }

    void deallocate(void* p, ssize_t) override
    {
        if (capturing_ && !blocks_.empty() && static_cast<char*>(base_) + blocks_.back() == p) {
            top_ = blocks_.back();
            blocks_.pop_back();
        }
    }

    core::Device device() const noexcept override
    {
        return kDEVICE;
    }

    void Begin()
    {
        capturing_ = true;
        top_       = 0;
        blocks_.clear();
    }
    void End()
    {
        capturing_ = false;
    }

private:
    static constexpr ssize_t kAlignment = 256;

    void*                base_{};
    const ssize_t        size_;
    ssize_t              top_{};
    std::vector<ssize_t> blocks_;
    bool                 capturing_ = false;
};

std::unique_ptr<DecodeGraphs> DecodeGraphs::Make(int hidden, int rows, DataType dtype)
{
    const ssize_t bytes = byte_size(dtype, (ssize_t)hidden * rows);
    // A layer's temporaries at `rows`: ~15 MiB at 256 rows for Qwen2-0.5B (QKV, attention output,
    // the fused gate/up in bf16 and its fp32 accumulation), with room for larger models.
    const ssize_t arena_bytes = ((ssize_t)16 << 20) + (ssize_t)rows * (128 << 10);
    void*         residual{};
    void*         hidden_states{};
    void*         arena{};
    // After the KV cache took its share of the free memory: no room is a warning, not an abort.
    if (cudaMalloc(&residual, bytes) != cudaSuccess || cudaMalloc(&hidden_states, bytes) != cudaSuccess
        || cudaMalloc(&arena, arena_bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        cudaFree(residual);
        cudaFree(hidden_states);
        TM_LOG_WARNING("cosyfast decode graphs: no room for {} MB of buffers; decode steps run eagerly",
                       (2 * bytes + arena_bytes) >> 20);
        return nullptr;
    }
    // Owned here (freed with the decoder), handed out as views of `rows` rows.
    return std::unique_ptr<DecodeGraphs>(
        new DecodeGraphs(Tensor{std::shared_ptr<void>(residual, cudaFree), {rows, hidden}, dtype, kDEVICE},
                         Tensor{std::shared_ptr<void>(hidden_states, cudaFree), {rows, hidden}, dtype, kDEVICE},
                         std::make_shared<Arena>(arena, arena_bytes)));
}

DecodeGraphs::DecodeGraphs(Tensor residual, Tensor hidden, std::shared_ptr<Arena> arena):
    residual_{std::move(residual)}, hidden_{std::move(hidden)}, arena_{std::move(arena)}
{
}

DecodeGraphs::~DecodeGraphs()
{
    for (auto& [key, entry] : graphs_) {
        if (entry.exec) {
            cudaGraphExecDestroy(entry.exec);
        }
    }
}

Tensor DecodeGraphs::Residual(int rows)
{
    return residual_.slice(0, rows);
}

Tensor DecodeGraphs::Hidden(int rows)
{
    return hidden_.slice(0, rows);
}

bool DecodeGraphs::Capture(Entry& entry, cudaStream_t stream, const std::function<void()>& layers)
{
    cudaGraph_t graph{};
    bool        ok = true;
    arena_->Begin();
    {
        core::ContextGuard guard{core::Allocator{std::static_pointer_cast<core::AllocatorImpl>(arena_)}};
        // Thread-local: the engine's other threads keep copying and synchronising meanwhile.
        if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
            arena_->End();
            (void)cudaGetLastError();
            return false;
        }
        try {
            layers();
        }
        catch (const std::bad_alloc&) {  // the arena's shortfall; CUDA errors abort inside TurboMind
            ok = false;
        }
        ok = cudaStreamEndCapture(stream, &graph) == cudaSuccess && ok && graph;
    }
    arena_->End();
    if (ok) {
        ok = cudaGraphInstantiate(&entry.exec, graph, 0) == cudaSuccess;
    }
    if (graph) {
        cudaGraphDestroy(graph);
    }
    if (!ok) {
        entry.exec = {};
        (void)cudaGetLastError();  // a failed capture leaves its error behind; the step reruns eagerly
    }
    return ok;
}

void DecodeGraphs::Run(const Key& key, cudaStream_t stream, const std::function<void()>& layers)
{
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
        if (graphs_.size() >= kMaxGraphs) {
            ++g_eager;
            layers();
            return;
        }
        it = graphs_.emplace(key, Entry{}).first;
    }
    Entry& entry = it->second;
    if (entry.exec) {
        TM_CUDA_CHECK(cudaGraphLaunch(entry.exec, stream));
        ++g_replayed;
        return;
    }
    if (entry.broken || entry.seen++ == 0) {
        ++g_eager;
        layers();
        return;
    }
    if (Capture(entry, stream, layers)) {
        TM_CUDA_CHECK(cudaGraphLaunch(entry.exec, stream));
        ++g_captured;
    }
    else {
        entry.broken = true;
        ++g_failed;
        layers();
    }
}

}  // namespace turbomind::cosyfast
