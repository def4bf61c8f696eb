// Reads float32 tensors from a safetensors file (https://huggingface.co/docs/safetensors):
//
//   bytes 0..8        N, the header length, an unsigned 64-bit little-endian integer
//   bytes 8..8+N      the header: a JSON object {name: {"dtype": "F32", "shape": [d0, d1, ...],
//                     "data_offsets": [begin, end]}, ..., "__metadata__": {string: string}}
//                     (may be padded with trailing spaces)
//   bytes 8+N..       the data region; a tensor's bytes are [begin, end) within it, row-major,
//                     little-endian
//
// The constructor reads and checks the whole header (types, shapes, offsets inside the file,
// byte counts matching the shapes, no two tensors overlapping), so a truncated or corrupt file
// fails at once with a sentence naming the file and the tensor. Tensor data is read on demand.
// Only F32 data can be read (the bundle writer stores nothing else).
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace cosyfast::io {

using File = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

struct TensorInfo {
  std::string dtype;           // safetensors dtype name: "F32", "BF16", ...
  std::vector<int64_t> shape;  // empty for a scalar
  uint64_t begin = 0, end = 0;  // byte range within the data region
  int64_t elements() const;
};

class SafetensorsFile {
 public:
  // Throws std::runtime_error "<path>: <what>" if the file cannot be opened or its header is bad.
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool Has(const std::string& name) const { return tensors_.count(name) != 0; }
  // The tensor's entry; throws std::runtime_error naming the file when it is absent.
  const TensorInfo& Info(const std::string& name) const;

  // Reads tensor `name` as float32 after checking that its dtype is F32 and its shape is exactly
  // `shape`. Throws std::runtime_error naming the file and tensor otherwise, or on a read error.
  std::vector<float> ReadF32(const std::string& name, const std::vector<int64_t>& shape) const;

 private:
  [[noreturn]] void Fail(const std::string& what) const;

  std::string path_;
  File file_{nullptr, &std::fclose};
  uint64_t data_start_ = 0;  // file offset of the data region
  uint64_t data_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Opens `path` for reading when it is a regular file, else throws std::runtime_error
// "<path>: <what>". The open does not block, so a FIFO in a file's place fails instead of
// waiting forever for a writer.
File OpenRegularFile(const std::string& path);
// The same without throwing: null, with *reason set ("No such file or directory", ...).
File TryOpenRegularFile(const std::string& path, std::string* reason);

// "[d0, d1, ...]", for messages.
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace cosyfast::io
