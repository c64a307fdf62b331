// SPDX-License-Identifier: GPL-2.0
/*
 * nn_consumer.ko - calls virtio_nn's kernel API (neural_api.h) at load time.
 *
 * The guest tests drive it with module parameters:
 *
 *   insmod nn_consumer.ko [mode=api|production|batch|ex|null|info]
 *       [input=1,2,...] [q16=1] [count=N] [batch=N] [timeout_ms=N]
 *       [in_size=N] [out_size=N] [nofallback=1]
 *
 * It runs @count calls of @mode with @input (whole numbers, turned into
 * Q16.16, or raw Q16.16 with q16=1; missing values are 0), sizes from
 * neural_api_get_info() unless @in_size/@out_size override them. The load
 * fails with the first call's error (so insmod reports the errno); on
 * success the module stays loaded and shows the answer in dmesg and in
 * /sys/module/nn_consumer/parameters/last_output (whole numbers, or Q16.16
 * with q16=1; rows of a batch separated by ';'). mode=null passes NULL
 * (expects -EINVAL); mode=info only reads the model info. mode=ex calls
 * neural_api_predict_ex() with @batch rows (NEURAL_API_NO_FALLBACK with
 * nofallback=1): every call's answer must equal the first call's (else the
 * load fails with -EBADMSG); fallback_answers counts the calls the driver's
 * CPU fallback answered and last_generation is the last call's generation.
 */

#include <linux/errno.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "neural_api.h"

#define MAX_INPUTS 4096
#define OUT_TEXT_LEN 4096

static char *mode = "api";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "api, production, batch, null or info");

static int input[64];
static int input_n;
module_param_array(input, int, &input_n, 0444);
MODULE_PARM_DESC(input, "Input values (missing ones are 0)");

static bool q16;
module_param(q16, bool, 0444);
MODULE_PARM_DESC(q16, "Inputs and shown outputs are raw Q16.16");

static int count = 1;
module_param(count, int, 0444);
MODULE_PARM_DESC(count, "Number of calls");

static int batch = 4;
module_param(batch, int, 0444);
MODULE_PARM_DESC(batch, "Samples per call with mode=batch");

static int timeout_ms = 1000;
module_param(timeout_ms, int, 0444);
MODULE_PARM_DESC(timeout_ms, "timeout_ms of each request");

static int in_size = -1;
module_param(in_size, int, 0444);
MODULE_PARM_DESC(in_size, "Input size passed (default: the model's)");

static int out_size = -1;
module_param(out_size, int, 0444);
MODULE_PARM_DESC(out_size, "Output size passed (default: the model's)");

static bool nofallback;
module_param(nofallback, bool, 0444);
MODULE_PARM_DESC(nofallback, "mode=ex: NEURAL_API_NO_FALLBACK");

static int fallback_answers;
module_param(fallback_answers, int, 0444);
MODULE_PARM_DESC(fallback_answers, "mode=ex: calls answered by the CPU fallback (read only)");

static int last_generation;
module_param(last_generation, int, 0444);
MODULE_PARM_DESC(last_generation, "mode=ex: generation of the last answer (read only)");

static char last_output[OUT_TEXT_LEN];
static char *last_output_p = last_output;
module_param_named(last_output, last_output_p, charp, 0444);
MODULE_PARM_DESC(last_output, "The answer of the last call (read only)");

static int run(void)
{
	struct neural_model_info info;
	int isz, osz, rows, i, n, ret = 0, len = 0;
	s32 *in = NULL, *out = NULL, *first = NULL;
	ktime_t t0;

	if (!strcmp(mode, "null")) {
		ret = neural_api_predict(NULL);
		pr_info("nn_consumer: null request: %d\n", ret);
		return ret;
	}
	ret = neural_api_get_info(&info);
	if (ret) {
		pr_info("nn_consumer: get_info: %d\n", ret);
		return ret;
	}
	if (!strcmp(mode, "info")) {
		snprintf(last_output, OUT_TEXT_LEN, "%u,%u,%u,%u", info.input_size,
			 info.output_size, info.max_batch, info.generation);
		return 0;
	}
	isz = in_size >= 0 ? in_size : info.input_size;
	osz = out_size >= 0 ? out_size : info.output_size;
	rows = (!strcmp(mode, "batch") || !strcmp(mode, "ex")) ? batch : 1;
	if (isz > MAX_INPUTS || osz > MAX_INPUTS || rows < 1 || rows > 4096)
		return -EINVAL;
	in = kcalloc((size_t)rows * max(isz, 1), sizeof(*in), GFP_KERNEL);
	out = kcalloc((size_t)rows * max(osz, 1), sizeof(*out), GFP_KERNEL);
	first = kcalloc((size_t)rows * max(osz, 1), sizeof(*out), GFP_KERNEL);
	if (!in || !out || !first) {
		ret = -ENOMEM;
		goto free;
	}
	for (n = 0; n < rows; n++)
		for (i = 0; i < isz && i < input_n; i++)
			in[n * isz + i] = q16 ? input[i] : INT_TO_FIXED(input[i]);

	t0 = ktime_get();
	for (n = 0; n < count && !ret; n++) {
		if (!strcmp(mode, "api")) {
			struct neural_prediction_request req = {
				.input_data = in, .output_data = out,
				.input_size = isz, .output_size = osz,
				.timeout_ms = timeout_ms,
			};

			ret = neural_api_predict(&req);
		} else if (!strcmp(mode, "production")) {
			ret = neural_predict_production(in, out, isz, osz);
		} else if (!strcmp(mode, "batch")) {
			struct neural_batch_request req = {
				.input_data = in, .output_data = out,
				.num_samples = rows, .input_size = isz,
				.output_size = osz, .timeout_ms = timeout_ms,
			};

			ret = neural_api_predict_batch(&req);
		} else if (!strcmp(mode, "ex")) {
			struct neural_predict_ex req = {
				.input_data = in, .output_data = out,
				.num_samples = rows, .input_size = isz,
				.output_size = osz, .timeout_ms = timeout_ms,
				.flags = nofallback ? NEURAL_API_NO_FALLBACK : 0,
			};
			size_t bytes = (size_t)rows * osz * sizeof(*out);

			ret = neural_api_predict_ex(&req);
			if (ret)
				break;
			if (req.answer_flags & NEURAL_API_ANSWER_FALLBACK)
				fallback_answers++;
			last_generation = req.generation;
			if (n == 0)
				memcpy(first, out, bytes);
			else if (memcmp(first, out, bytes))
				ret = -EBADMSG;
		} else {
			ret = -EINVAL;
		}
	}
	pr_info("nn_consumer: mode=%s calls=%d rc=%d after %lld ms\n", mode, n,
		ret, ktime_ms_delta(ktime_get(), t0));
	if (!strcmp(mode, "ex"))
		pr_info("nn_consumer: fallback answers %d, last generation %d\n",
			fallback_answers, last_generation);
	if (ret)
		goto free;
	for (n = 0; n < rows; n++)
		for (i = 0; i < osz && len < OUT_TEXT_LEN - 16; i++)
			len += scnprintf(last_output + len, OUT_TEXT_LEN - len,
					 "%s%d", i ? "," : (n ? ";" : ""),
					 q16 ? out[n * osz + i] :
					 FIXED_TO_INT(out[n * osz + i]));
	pr_info("nn_consumer: output: %s\n", last_output);
free:
	kfree(in);
	kfree(out);
	kfree(first);
	return ret;
}

static int __init nn_consumer_init(void)
{
	return run();
}

static void __exit nn_consumer_exit(void)
{
}

module_init(nn_consumer_init);
module_exit(nn_consumer_exit);
MODULE_DESCRIPTION("Test consumer of the virtio_nn kernel API");
MODULE_LICENSE("GPL");
