// SPDX-License-Identifier: GPL-2.0
/*
 * nn_bench.ko - latency and throughput of virtio_nn's kernel API.
 *
 *   insmod nn_bench.ko [iterations=200] [batch=32] [threads=1] [null=1]
 *
 * At load time it runs @iterations single-sample calls
 * (neural_api_predict) and then @iterations batched calls of @batch samples
 * (neural_api_predict_batch, @batch clamped to the device's max batch), on
 * @threads kernel threads at once, with inputs 1..n (the first one changing
 * at each call, so that the result cache does not answer), and prints per mode
 * the latency per call (p50, p99, max) and the predictions (samples) per
 * second to the kernel log:
 *
 *   nn_bench: single: 200 calls x 1 samples, 1 threads: p50 812 us, ...
 *
 * With @null (the default) it then runs the same two modes as null requests
 * (neural_api_null: the same round trip, no inference), printed as
 * "null-single" and "null-batch": the transport's share of the latency.
 *
 * The load fails with the first error. Unload with rmmod.
 */

#include <linux/completion.h>
#include <linux/errno.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/sort.h>

#include "neural_api.h"

static int iterations = 200;
module_param(iterations, int, 0444);
MODULE_PARM_DESC(iterations, "Calls per mode and thread");

static int batch = 32;
module_param(batch, int, 0444);
MODULE_PARM_DESC(batch, "Samples per batched call");

static bool null = true;
module_param(null, bool, 0444);
MODULE_PARM_DESC(null, "Also run both modes as null requests (no inference)");

static int threads = 1;
module_param(threads, int, 0444);
MODULE_PARM_DESC(threads, "Threads calling at once (1..16)");

struct bench_thread {
	struct completion done;
	int rows;
	bool null;
	struct neural_model_info info;
	u64 *lat;		/* ns per call */
	int ret;
};

static int cmp_u64(const void *a, const void *b)
{
	u64 x = *(const u64 *)a, y = *(const u64 *)b;

	return x < y ? -1 : x > y;
}

static int bench_fn(void *arg)
{
	struct bench_thread *t = arg;
	u32 isz = t->info.input_size, osz = t->info.output_size;
	s32 *in, *out;
	int i, ret = 0;

	in = kcalloc((size_t)t->rows * isz, sizeof(*in), GFP_KERNEL);
	out = kcalloc((size_t)t->rows * osz, sizeof(*out), GFP_KERNEL);
	if (!in || !out) {
		ret = -ENOMEM;
		goto out;
	}
	for (i = 0; i < t->rows * isz; i++)
		in[i] = INT_TO_FIXED(i % isz + 1);
	for (i = 0; i < iterations && !ret; i++) {
		ktime_t t0;

		/* Other inputs at each call: no answer from the result cache. */
		in[0] = INT_TO_FIXED(i % 30000);
		t0 = ktime_get();

		if (t->null) {
			struct neural_batch_request req = {
				.input_data = in, .num_samples = t->rows,
				.input_size = isz, .timeout_ms = 5000,
			};

			ret = neural_api_null(&req);
		} else if (t->rows == 1) {
			struct neural_prediction_request req = {
				.input_data = in, .output_data = out,
				.input_size = isz, .output_size = osz,
				.timeout_ms = 5000,
			};

			ret = neural_api_predict(&req);
		} else {
			struct neural_batch_request req = {
				.input_data = in, .output_data = out,
				.num_samples = t->rows, .input_size = isz,
				.output_size = osz, .timeout_ms = 5000,
			};

			ret = neural_api_predict_batch(&req);
		}
		t->lat[i] = ktime_to_ns(ktime_sub(ktime_get(), t0));
	}
out:
	kfree(in);
	kfree(out);
	t->ret = ret;
	/* Exits without running module code after the completion. */
	kthread_complete_and_exit(&t->done, 0);
}

static int bench(const char *name, int rows, bool null_req,
		 struct neural_model_info *info)
{
	struct bench_thread *t;
	u64 *all, total_ns, n;
	ktime_t t0;
	int i, ret = 0;

	t = kcalloc(threads, sizeof(*t), GFP_KERNEL);
	all = kcalloc((size_t)threads * iterations, sizeof(*all), GFP_KERNEL);
	if (!t || !all) {
		ret = -ENOMEM;
		goto free;
	}
	t0 = ktime_get();
	for (i = 0; i < threads; i++) {
		struct task_struct *task;

		init_completion(&t[i].done);
		t[i].rows = rows;
		t[i].null = null_req;
		t[i].info = *info;
		t[i].lat = all + (size_t)i * iterations;
		task = kthread_run(bench_fn, &t[i], "nn_bench/%d", i);
		if (IS_ERR(task)) {
			t[i].ret = PTR_ERR(task);
			complete(&t[i].done);
		}
	}
	for (i = 0; i < threads; i++) {
		wait_for_completion(&t[i].done);
		if (t[i].ret && !ret)
			ret = t[i].ret;
	}
	total_ns = ktime_to_ns(ktime_sub(ktime_get(), t0));
	if (ret) {
		pr_err("nn_bench: %s: error %d\n", name, ret);
		goto free;
	}
	n = (u64)threads * iterations;
	sort(all, n, sizeof(*all), cmp_u64, NULL);
	pr_info("nn_bench: %s: %llu calls x %d samples, %d threads: p50 %llu us, p99 %llu us, max %llu us, %llu predictions/s\n",
		name, n, rows, threads, div_u64(all[n / 2], 1000),
		div_u64(all[div_u64(n * 99, 100)], 1000),
		div_u64(all[n - 1], 1000),
		div64_u64(n * rows * NSEC_PER_SEC, max_t(u64, total_ns, 1)));
free:
	kfree(all);
	kfree(t);
	return ret;
}

static int __init nn_bench_init(void)
{
	struct neural_model_info info;
	u32 rows;
	int ret;

	if (iterations < 1 || threads < 1 || threads > 16 || batch < 1)
		return -EINVAL;
	ret = neural_api_get_info(&info);
	if (ret)
		return ret;
	rows = min_t(u32, batch, info.max_batch);
	ret = bench("single", 1, false, &info);
	if (!ret)
		ret = bench("batch", rows, false, &info);
	if (!ret && null)
		ret = bench("null-single", 1, true, &info);
	if (!ret && null)
		ret = bench("null-batch", rows, true, &info);
	return ret;
}

static void __exit nn_bench_exit(void)
{
}

module_init(nn_bench_init);
module_exit(nn_bench_exit);
MODULE_DESCRIPTION("Benchmark of the virtio_nn kernel API");
MODULE_LICENSE("GPL");
