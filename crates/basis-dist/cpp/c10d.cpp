// A C interface over libtorch's c10d: the TCP store, the Gloo backend (and NCCL, in
// nccl.cpp, when built), collectives on tch tensors, and a differentiable all-reduce.
// Every function catches C++ exceptions and returns them as a malloc'ed message.

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "c10d.h"

namespace {

// Groups alive, by id: the differentiable all-reduce looks its group up at backward time
// and fails with a message, not a dangling pointer, when the group is gone.
std::mutex registry_mutex;
std::unordered_map<int64_t, c10::intrusive_ptr<c10d::Backend>> registry;
int64_t next_id = 1;

c10::intrusive_ptr<c10d::Backend> lookup(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto found = registry.find(id);
  TORCH_CHECK(found != registry.end(), "the process group was closed before backward ran");
  return found->second;
}

void wait(const c10::intrusive_ptr<c10d::Work>& work, int64_t timeout_ms) {
  work->wait(std::chrono::milliseconds(timeout_ms));
}

at::Tensor all_reduce_sum_now(const c10::intrusive_ptr<c10d::Backend>& group, at::Tensor x,
                              int64_t timeout_ms) {
  std::vector<at::Tensor> tensors{std::move(x)};
  wait(group->allreduce(tensors), timeout_ms);
  return tensors[0];
}

// Sum across ranks; backward sums the incoming gradients across ranks (each rank's loss
// depends on the sum every rank computed).
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t group, int64_t timeout_ms) {
    ctx->saved_data["group"] = group;
    ctx->saved_data["timeout_ms"] = timeout_ms;
    return all_reduce_sum_now(lookup(group), x.detach().clone(), timeout_ms);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto group = lookup(ctx->saved_data["group"].toInt());
    auto timeout_ms = ctx->saved_data["timeout_ms"].toInt();
    auto grad = all_reduce_sum_now(group, grads[0].contiguous().clone(), timeout_ms);
    return {grad, at::Tensor(), at::Tensor()};
  }
};

// Gradient averaging that overlaps backward: parameters are assigned to buckets up front;
// a hook on every parameter copies its gradient into its bucket as autograd produces it,
// and a bucket's all-reduce starts as soon as its last gradient is in. After backward,
// buckets still incomplete (parameters that got no gradient) are reduced in bucket order,
// every bucket is waited for, and the mean goes back into each parameter's .grad.
struct Overlap {
  int64_t group = 0;
  std::vector<at::Tensor> params;
  std::vector<unsigned> hooks;
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucket_of;
  std::vector<int64_t> offset;
  std::vector<at::Tensor> flat;
  std::vector<size_t> ready;
  std::vector<char> seen;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  std::string failure;
  bool armed = false;
  std::mutex mutex;

  void arrive(size_t i, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed || seen[i] || !failure.empty()) {
      return;
    }
    size_t b = bucket_of[i];
    auto n = params[i].numel();
    flat[b].narrow(0, offset[i], n).copy_(grad.reshape({-1}));
    seen[i] = 1;
    if (++ready[b] == buckets[b].size()) {
      try {
        std::vector<at::Tensor> one{flat[b]};
        works[b] = lookup(group)->allreduce(one);
      } catch (const std::exception& e) {
        failure = e.what();
      }
    }
  }
};

}  // namespace

int64_t bd_register(c10::intrusive_ptr<c10d::Backend> backend) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  int64_t id = next_id++;
  registry.emplace(id, std::move(backend));
  return id;
}

extern "C" {

void bd_free_message(char* message) { std::free(message); }

char* bd_store_new(const char* host, uint16_t port, int is_server, int64_t world_size,
                   int64_t timeout_ms, const char* prefix, bd_store** out) {
  return bd_guarded([&] {
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = is_server != 0;
    options.numWorkers = static_cast<size_t>(world_size);
    options.waitWorkers = true;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    if (prefix != nullptr && prefix[0] != '\0') {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    }
    *out = reinterpret_cast<bd_store*>(new c10::intrusive_ptr<c10d::Store>(std::move(store)));
  });
}

void bd_store_free(bd_store* store) {
  delete reinterpret_cast<c10::intrusive_ptr<c10d::Store>*>(store);
}

char* bd_group_new_gloo(bd_store* store, int rank, int size, int64_t timeout_ms,
                        const char* interface, const char* hostname, int64_t threads,
                        int64_t* out) {
  return bd_guarded([&] {
    auto& s = *reinterpret_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    if (interface != nullptr && interface[0] != '\0') {
      options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(std::string(interface)));
    } else if (hostname != nullptr && hostname[0] != '\0') {
      options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(std::string(hostname)));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    if (threads > 0) {
      options->threads = static_cast<int>(threads);
    }
    c10::intrusive_ptr<c10d::Backend> group =
        c10::make_intrusive<c10d::ProcessGroupGloo>(s, rank, size, options);
    *out = bd_register(std::move(group));
  });
}

void bd_group_free(int64_t group) {
  c10::intrusive_ptr<c10d::Backend> gone;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto found = registry.find(group);
    if (found == registry.end()) {
      return;
    }
    gone = std::move(found->second);
    registry.erase(found);
  }
  // Destroyed outside the lock: joining the backend's threads may take a moment.
}

char* bd_all_reduce(int64_t group, at::Tensor** tensors, size_t count, int op,
                    int64_t timeout_ms) {
  return bd_guarded([&] {
    auto g = lookup(group);
    c10d::AllreduceOptions options;
    options.reduceOp = op == 1 ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    // One collective per tensor (Gloo wants one kind per call), all in flight at once.
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (size_t i = 0; i < count; ++i) {
      std::vector<at::Tensor> one{*tensors[i]};
      works.push_back(g->allreduce(one, options));
    }
    for (auto& work : works) {
      wait(work, timeout_ms);
    }
  });
}

char* bd_all_reduce_start(int64_t group, at::Tensor* tensor, bd_work** out) {
  return bd_guarded([&] {
    auto g = lookup(group);
    std::vector<at::Tensor> list{*tensor};
    auto work = g->allreduce(list);
    *out = reinterpret_cast<bd_work*>(new c10::intrusive_ptr<c10d::Work>(std::move(work)));
  });
}

char* bd_work_wait(bd_work* work, int64_t timeout_ms) {
  return bd_guarded([&] { wait(*reinterpret_cast<c10::intrusive_ptr<c10d::Work>*>(work), timeout_ms); });
}

void bd_work_free(bd_work* work) {
  delete reinterpret_cast<c10::intrusive_ptr<c10d::Work>*>(work);
}

char* bd_broadcast(int64_t group, at::Tensor** tensors, size_t count, int root,
                   int64_t timeout_ms) {
  return bd_guarded([&] {
    auto g = lookup(group);
    c10d::BroadcastOptions options;
    options.rootRank = root;
    // Gloo broadcasts one tensor per call.
    for (size_t i = 0; i < count; ++i) {
      std::vector<at::Tensor> one{*tensors[i]};
      wait(g->broadcast(one, options), timeout_ms);
    }
  });
}

char* bd_barrier(int64_t group, int64_t timeout_ms) {
  return bd_guarded([&] {
    auto g = lookup(group);
    wait(g->barrier(), timeout_ms);
  });
}

char* bd_all_reduce_differentiable(int64_t group, at::Tensor* input, int64_t timeout_ms,
                                   at::Tensor** out) {
  return bd_guarded([&] {
    auto result = AllReduceSum::apply(*input, group, timeout_ms);
    *out = new at::Tensor(std::move(result));
  });
}

char* bd_overlap_new(int64_t group, at::Tensor** params, size_t count, const size_t* bucket_sizes,
                     size_t buckets, bd_overlap** out) {
  return bd_guarded([&] {
    auto state = std::make_shared<Overlap>();
    state->group = group;
    size_t next = 0;
    for (size_t b = 0; b < buckets; ++b) {
      std::vector<size_t> members;
      int64_t size = 0;
      for (size_t k = 0; k < bucket_sizes[b]; ++k, ++next) {
        TORCH_CHECK(next < count, "bucket sizes add up to more than the parameters");
        const at::Tensor& p = *params[next];
        state->params.push_back(p);
        state->bucket_of.push_back(b);
        state->offset.push_back(size);
        size += p.numel();
        members.push_back(next);
      }
      state->buckets.push_back(members);
      auto first = *params[members.empty() ? 0 : members[0]];
      state->flat.push_back(at::empty({size}, first.options().requires_grad(false)));
    }
    TORCH_CHECK(next == count, "bucket sizes add up to fewer than the parameters");
    state->ready.assign(buckets, 0);
    state->works.resize(buckets);
    state->seen.assign(count, 0);
    std::weak_ptr<Overlap> weak = state;
    for (size_t i = 0; i < count; ++i) {
      state->hooks.push_back(state->params[i].register_hook([weak, i](const at::Tensor& grad) {
        if (auto s = weak.lock()) {
          s->arrive(i, grad);
        }
      }));
    }
    *out = reinterpret_cast<bd_overlap*>(new std::shared_ptr<Overlap>(std::move(state)));
  });
}

void bd_overlap_free(bd_overlap* handle) {
  auto* state = reinterpret_cast<std::shared_ptr<Overlap>*>(handle);
  for (size_t i = 0; i < (*state)->params.size(); ++i) {
    try {
      (*state)->params[i].remove_hook((*state)->hooks[i]);
    } catch (...) {
    }
  }
  delete state;
}

void bd_overlap_arm(bd_overlap* handle) {
  auto& s = **reinterpret_cast<std::shared_ptr<Overlap>*>(handle);
  std::lock_guard<std::mutex> lock(s.mutex);
  std::fill(s.ready.begin(), s.ready.end(), 0);
  std::fill(s.seen.begin(), s.seen.end(), 0);
  for (auto& w : s.works) {
    w.reset();
  }
  s.failure.clear();
  s.armed = true;
}

// After backward: reduce the buckets that did not fill (zeros for parameters without a
// gradient), wait for all, write the mean into every parameter that got a gradient.
// `seen` receives one flag per parameter (1: it had a gradient this step).
char* bd_overlap_finish(bd_overlap* handle, int64_t world_size, int64_t timeout_ms, char* seen) {
  return bd_guarded([&] {
    auto& s = **reinterpret_cast<std::shared_ptr<Overlap>*>(handle);
    std::lock_guard<std::mutex> lock(s.mutex);
    s.armed = false;
    TORCH_CHECK(s.failure.empty(), s.failure);
    auto group = lookup(s.group);
    for (size_t b = 0; b < s.buckets.size(); ++b) {
      if (s.works[b]) {
        continue;
      }
      for (size_t i : s.buckets[b]) {
        if (!s.seen[i]) {
          s.flat[b].narrow(0, s.offset[i], s.params[i].numel()).zero_();
        }
      }
      std::vector<at::Tensor> one{s.flat[b]};
      s.works[b] = group->allreduce(one);
    }
    for (auto& w : s.works) {
      wait(w, timeout_ms);
    }
    at::NoGradGuard no_grad;
    double scale = 1.0 / static_cast<double>(world_size);
    for (size_t i = 0; i < s.params.size(); ++i) {
      seen[i] = s.seen[i];
      if (!s.seen[i]) {
        continue;
      }
      at::Tensor grad = s.params[i].grad();
      TORCH_CHECK(grad.defined(), "a parameter's gradient hook ran but it has no gradient");
      auto part = s.flat[s.bucket_of[i]].narrow(0, s.offset[i], s.params[i].numel());
      at::mul_out(grad, part.view(grad.sizes()), at::scalar_tensor(scale, part.options()));
    }
  });
}

}  // extern "C"
