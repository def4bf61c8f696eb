// cosyfast: decode steps replayed from CUDA graphs, a hook in TurboMind's UnifiedDecoder.
// Written for cosyfast (Apache-2.0); copied into lmdeploy's src/turbomind/models/llama/.
//
// Why: a decode step of the 24-layer model is launch-bound (H200, batch 1: 0.89 ms of GPU work in
// a 1.57 ms step; ~225 of its ~260 launches are the decoder layers). Replaying the layers from one
// CUDA graph turns those launches into one. third_party/turbomind/CUDA_GRAPHS.md has the reading of
// TurboMind's decode step this rests on.
//
// What is captured: the first RMSNorm and the layer loop of UnifiedDecoder::Forward, for steps in
// which every row decodes one token (no prefill in the batch). Their inputs and outputs go through
// two buffers of our own (the residual and the hidden states, max_batch rows), their temporaries
// through an arena of our own while capturing, so that every address the graph holds stays valid.
// The host values the layers' launches depend on are the graph's key: the phase, the batch size,
// the attention's k_max (rounded up to a power of two from 64, which only tunes the split count:
// lengths are read from device memory) and the addresses of the per-step buffers the attention
// borrows. A key's first step runs eagerly (cuBLASLt plans, kernel attributes and the like are made
// then), its second is captured and launched, later ones replay. A capture the arena cannot hold
// runs eagerly instead (and its key stays eager); a CUDA error during a capture ends the process,
// as TurboMind's checks end it for any CUDA error.
//
// Off unless a DecodeScope with fast_decode and decode_graphs is alive when the engine is created
// (cosyfast_decode_gemm.h; cosyfast's loader turns both on by default); lmdeploy's own use of this
// build never sets it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <tuple>

#include <cuda_runtime.h>

#include "src/turbomind/core/core.h"
#include "src/turbomind/models/llama/cosyfast_decode_gemm.h"  // DecodeScope, DecodeGraphsOn

namespace turbomind::cosyfast {

// Process-wide, since the start: decode steps replayed, captured, run eagerly (a key's first step,
// a key past the graph limit, or a key whose capture failed) and captures that failed. Replayed
// steps' GEMMs are not in GetDecodeGemmCounts (no host code runs for them).
struct DecodeGraphCounts {
    int64_t replayed;
    int64_t captured;
    int64_t eager;
    int64_t failed;
};
DecodeGraphCounts GetDecodeGraphCounts();

// The attention's k_max for a graph-served step: rounded up to 64 * 2^n (at most `session_len`).
int RoundKMax(int k_max, int session_len);

class DecodeGraphs {
public:
    // Largest batch a graph serves: what the decode GEMM hook takes (DecodeGemm::kMaxRows), the
    // kernels the capture was reasoned about with.
    static constexpr int kMaxRows = 256;

    // hidden: the model's hidden size; rows: the engine's max batch; dtype: the activations'. Null,
    // with a warning, when the GPU has no room left for the buffers (the engine then runs eagerly).
    static std::unique_ptr<DecodeGraphs> Make(int hidden, int rows, DataType dtype);
    ~DecodeGraphs();
    DecodeGraphs(const DecodeGraphs&)            = delete;
    DecodeGraphs& operator=(const DecodeGraphs&) = delete;

    // What a graph depends on besides the weights (see the file's comment).
    struct Key {
        int         phase;
        int         rows;
        int         k_max;
        const void* finished;
        const void* sequence_length;
        const void* q_offsets;
        const void* k_offsets;
        const void* readonly_blocks;
        auto        tie() const
        {
            return std::tie(phase, rows, k_max, finished, sequence_length, q_offsets, k_offsets, readonly_blocks);
        }
        bool operator<(const Key& o) const
        {
            return tie() < o.tie();
        }
    };

    // The buffers a graph-served step reads its input from and leaves its output in: [rows, hidden].
    Tensor Residual(int rows);
    Tensor Hidden(int rows);
    DataType dtype() const
    {
        return residual_.dtype();
    }

    // Runs `layers` (which reads Residual(key.rows) and writes Hidden(key.rows) and the residual)
    // for this key on `stream`: eagerly, captured then launched, or replayed (see above).
    void Run(const Key& key, cudaStream_t stream, const std::function<void()>& layers);

private:
    class Arena;

    struct Entry {
        int             seen = 0;
        cudaGraphExec_t exec{};
        bool            broken = false;
    };

    DecodeGraphs(Tensor residual, Tensor hidden, std::shared_ptr<Arena> arena);
    bool Capture(Entry& entry, cudaStream_t stream, const std::function<void()>& layers);

    Tensor                 residual_;
    Tensor                 hidden_;
    std::shared_ptr<Arena> arena_;
    std::map<Key, Entry>   graphs_;
};

}  // namespace turbomind::cosyfast
