// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-nn guest driver: the C glue.
 *
 * Everything here is what Rust cannot express in a Linux 6.12 out-of-tree
 * module: static tables that the kernel keeps pointers to (the virtio id
 * table and driver, the proc_ops, the sysfs attribute group, the misc
 * device, the shrinker, the health check's delayed work, the model copy's
 * fetch work, the module parameters), the EXPORT_SYMBOL_GPLs of the kernel API (include/
 * neural_api.h, implemented in api.rs) and wrappers around static inline
 * functions and macros. All
 * logic lives in the Rust crate (virtio_nn_main.rs and its submodules); the
 * callbacks named here are defined there with #[no_mangle].
 *
 * The Rust declarations of these functions are in glue.rs; keep the two in
 * sync.
 */

#include <linux/capability.h>
#include <linux/completion.h>
#include <linux/crc32.h>
#include <linux/cred.h>
#include <linux/err.h>
#include <linux/jiffies.h>
#include <linux/kobject.h>
#include <linux/miscdevice.h>
#include <linux/mod_devicetable.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/pid.h>
#include <linux/proc_fs.h>
#include <linux/ratelimit.h>
#include <linux/rcupdate.h>
#include <linux/seqlock.h>
#include <linux/sched.h>
#include <linux/scatterlist.h>
#include <linux/shrinker.h>
#include <linux/slab.h>
#include <linux/sched/signal.h>
#include <linux/smp.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "virtio_nn_glue.h"
#include "neural_api.h"

/* Must equal protocol::VIRTIO_ID_NN (nn-core/src/protocol.rs). */
#define VIRTIO_ID_NN 38

/* --- Module parameter -------------------------------------------------- */

static unsigned int timeout_ms = 5000;
module_param(timeout_ms, uint, 0644);
MODULE_PARM_DESC(timeout_ms,
		 "How long a prediction waits for the device, in ms (0: no limit)");

/* The prediction timeout in ms; 0 for no limit. */
unsigned int virtio_nn_timeout_ms(void)
{
	return READ_ONCE(timeout_ms);
}

static unsigned int cache_ms = 1000;
module_param(cache_ms, uint, 0644);
MODULE_PARM_DESC(cache_ms,
		 "How long a single-sample answer is cached, in ms (0: no cache)");

unsigned int virtio_nn_cache_ms(void)
{
	return READ_ONCE(cache_ms);
}

static unsigned int max_orphans = 8;
module_param(max_orphans, uint, 0644);
MODULE_PARM_DESC(max_orphans,
		 "Requests a uid may have abandoned (timed out, killed) while the device still holds them; more: EAGAIN (0: no limit)");

unsigned int virtio_nn_max_orphans(void)
{
	return READ_ONCE(max_orphans);
}

static unsigned int cache_fallback_ms = 30000;
module_param(cache_fallback_ms, uint, 0644);
MODULE_PARM_DESC(cache_fallback_ms,
		 "Oldest cached answer returned when a request times out, in ms (0: no fallback)");

unsigned int virtio_nn_cache_fallback_ms(void)
{
	return READ_ONCE(cache_fallback_ms);
}

static unsigned int max_request_kib;
module_param(max_request_kib, uint, 0644);
MODULE_PARM_DESC(max_request_kib,
		 "Largest request (inputs and room for the outputs), in KiB; larger: E2BIG (0: the largest the protocol allows)");

unsigned int virtio_nn_max_request_kib(void)
{
	return READ_ONCE(max_request_kib);
}

/* --- request buffers --------------------------------------------------- */

/* The largest kmalloc(): a request's buffer chunks stay within it. */
size_t virtio_nn_kmalloc_max_size(void)
{
	return KMALLOC_MAX_SIZE;
}

/* sg_set_buf(): one entry of a request's scatterlist. */
void virtio_nn_sg_set_buf(struct scatterlist *sg, const void *buf,
			  unsigned int len)
{
	sg_set_buf(sg, buf, len);
}

/* --- time and CPU helpers ---------------------------------------------- */

/* The jiffies value @ms milliseconds from now. */
unsigned long virtio_nn_jiffies_after_ms(unsigned int ms)
{
	return jiffies + msecs_to_jiffies(ms);
}

/* Jiffies left until @end; 0 once it has passed. */
long virtio_nn_jiffies_until(unsigned long end)
{
	long left = (long)(end - jiffies);

	return left > 0 ? left : 0;
}

/* The CPU the caller runs on (may change right after: only a hint). */
unsigned int virtio_nn_cpu(void)
{
	return raw_smp_processor_id();
}

/* --- the kernel API (include/neural_api.h; implemented in api.rs) ----- */

EXPORT_SYMBOL_GPL(neural_api_predict);
EXPORT_SYMBOL_GPL(neural_api_predict_batch);
EXPORT_SYMBOL_GPL(neural_predict_production);
EXPORT_SYMBOL_GPL(neural_api_get_info);
EXPORT_SYMBOL_GPL(neural_api_null);
EXPORT_SYMBOL_GPL(neural_api_predict_ex);

/* --- virtio driver ----------------------------------------------------- */

static const struct virtio_device_id virtio_nn_id_table[] = {
	{ VIRTIO_ID_NN, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, virtio_nn_id_table);

static const unsigned int virtio_nn_features[] = {
	VIRTIO_F_VERSION_1,
};

/*
 * One value per file under the device's own sysfs directory, as sysfs
 * convention asks: /sys/bus/virtio/devices/virtioN/neural_network/ (a named
 * group, because the virtio core already has a "status" file there). The
 * driver core adds the group after a successful probe and removes it
 * (waiting for running shows) before remove, so vdev->priv holds the bound
 * device while a show runs.
 */
#define VIRTIO_NN_DEV_ATTR(_name, _which)				\
static ssize_t virtio_nn_##_name##_show(struct device *dev,		\
					struct device_attribute *attr,	\
					char *buf)			\
{									\
	return virtio_nn_dev_attr_show(dev_to_virtio(dev), _which, buf);	\
}									\
static struct device_attribute virtio_nn_dev_attr_##_name =		\
	__ATTR(_name, 0444, virtio_nn_##_name##_show, NULL)

VIRTIO_NN_DEV_ATTR(generation, VIRTIO_NN_ATTR_GENERATION);
VIRTIO_NN_DEV_ATTR(status, VIRTIO_NN_ATTR_STATUS);
VIRTIO_NN_DEV_ATTR(input_dim, VIRTIO_NN_ATTR_INPUT_DIM);
VIRTIO_NN_DEV_ATTR(output_dim, VIRTIO_NN_ATTR_OUTPUT_DIM);
VIRTIO_NN_DEV_ATTR(num_layers, VIRTIO_NN_ATTR_NUM_LAYERS);
VIRTIO_NN_DEV_ATTR(max_batch, VIRTIO_NN_ATTR_MAX_BATCH);
VIRTIO_NN_DEV_ATTR(queues, VIRTIO_NN_ATTR_QUEUES);

static struct attribute *virtio_nn_dev_attrs[] = {
	&virtio_nn_dev_attr_generation.attr,
	&virtio_nn_dev_attr_status.attr,
	&virtio_nn_dev_attr_input_dim.attr,
	&virtio_nn_dev_attr_output_dim.attr,
	&virtio_nn_dev_attr_num_layers.attr,
	&virtio_nn_dev_attr_max_batch.attr,
	&virtio_nn_dev_attr_queues.attr,
	NULL,
};

static const struct attribute_group virtio_nn_dev_group = {
	.name = "neural_network",
	.attrs = virtio_nn_dev_attrs,
};

static const struct attribute_group *virtio_nn_dev_groups[] = {
	&virtio_nn_dev_group,
	NULL,
};

static struct virtio_driver virtio_nn_driver = {
	.driver.name = KBUILD_MODNAME,
	.driver.dev_groups = virtio_nn_dev_groups,
	.id_table = virtio_nn_id_table,
	.feature_table = virtio_nn_features,
	.feature_table_size = ARRAY_SIZE(virtio_nn_features),
	.probe = virtio_nn_probe,
	.remove = virtio_nn_remove,
	.config_changed = virtio_nn_config_changed,
#ifdef CONFIG_PM_SLEEP
	.freeze = virtio_nn_freeze,
	.restore = virtio_nn_restore,
#endif
};

int virtio_nn_register_driver(void)
{
	return register_virtio_driver(&virtio_nn_driver);
}

void virtio_nn_unregister_driver(void)
{
	unregister_virtio_driver(&virtio_nn_driver);
}

/* --- static inline virtio helpers ------------------------------------- */

u32 virtio_nn_cread32(struct virtio_device *vdev, unsigned int offset)
{
	return virtio_cread32(vdev, offset);
}

bool virtio_nn_has_feature(const struct virtio_device *vdev, unsigned int fbit)
{
	return virtio_has_feature(vdev, fbit);
}

int virtio_nn_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
		       struct virtqueue *vqs[],
		       struct virtqueue_info vqs_info[])
{
	return virtio_find_vqs(vdev, nvqs, vqs, vqs_info, NULL);
}

void virtio_nn_device_ready(struct virtio_device *vdev)
{
	virtio_device_ready(vdev);
}

void virtio_nn_del_vqs(struct virtio_device *vdev)
{
	vdev->config->del_vqs(vdev);
}

/* --- other static inline helpers --------------------------------------- */

void virtio_nn_init_completion(struct completion *x)
{
	init_completion(x);
}

unsigned long virtio_nn_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

void virtio_nn_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

void virtio_nn_init_waitqueue_head(struct wait_queue_head *wq)
{
	init_waitqueue_head(wq);
}

void virtio_nn_wake_up_all(struct wait_queue_head *wq)
{
	wake_up_all(wq);
}

/*
 * Sleeps until *@seq differs from @seen, at most @timeout jiffies; only a
 * fatal signal interrupts the sleep. Returns > 0 if it differs, 0 on
 * timeout, -ERESTARTSYS on a fatal signal.
 */
long virtio_nn_wait_seq_killable(struct wait_queue_head *wq, const u32 *seq,
				 u32 seen, long timeout)
{
	return wait_event_killable_timeout(*wq, READ_ONCE(*seq) != seen,
					   timeout);
}

/*
 * One rate limit (the kernel's default: 10 messages per 5 s) for the
 * driver's messages that a request can cause.
 */
bool virtio_nn_ratelimit(void)
{
	static DEFINE_RATELIMIT_STATE(rs, DEFAULT_RATELIMIT_INTERVAL,
				      DEFAULT_RATELIMIT_BURST);

	return __ratelimit(&rs);
}

/* The lock-free config copy (config_snap.rs). */
void virtio_nn_seqlock_init(seqlock_t *sl)
{
	seqlock_init(sl);
}

void virtio_nn_write_seqlock(seqlock_t *sl)
{
	write_seqlock(sl);
}

void virtio_nn_write_sequnlock(seqlock_t *sl)
{
	write_sequnlock(sl);
}

unsigned int virtio_nn_read_seqbegin(const seqlock_t *sl)
{
	return read_seqbegin(sl);
}

bool virtio_nn_read_seqretry(const seqlock_t *sl, unsigned int start)
{
	return read_seqretry(sl, start);
}

void virtio_nn_rcu_read_lock(void)
{
	rcu_read_lock();
}

void virtio_nn_rcu_read_unlock(void)
{
	rcu_read_unlock();
}

/*
 * The session of the calling task, pinned (the caller puts it with
 * put_pid()). task_session() needs RCU: another thread of the group may
 * call setsid() meanwhile.
 */
struct pid *virtio_nn_get_session(void)
{
	struct pid *pid;

	rcu_read_lock();
	pid = get_pid(task_session(current));
	rcu_read_unlock();
	return pid;
}

/* Whether a task is still in the session @pid (a pinned struct pid). */
bool virtio_nn_session_alive(struct pid *pid)
{
	bool alive;

	rcu_read_lock();
	alive = pid_has_task(pid, PIDTYPE_SID);
	rcu_read_unlock();
	return alive;
}

/* The effective uid of the calling task (kernel-internal kuid value). */
u32 virtio_nn_current_euid(void)
{
	return __kuid_val(current_euid());
}

/* --- /proc/neural_network/{predict,predict_q16} ------------------------ */

void *virtio_nn_pde_data(const struct inode *inode)
{
	return pde_data(inode);
}

const struct proc_ops virtio_nn_proc_ops = {
	.proc_open = virtio_nn_proc_open,
	.proc_read = virtio_nn_proc_read,
	.proc_write = virtio_nn_proc_write,
	.proc_lseek = default_llseek,
	.proc_release = virtio_nn_proc_release,
};

/* --- /sys/kernel/neural_network/{model_info,performance,health} ------- */

static ssize_t model_info_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	return virtio_nn_model_info_show(buf);
}

static ssize_t performance_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	return virtio_nn_performance_show(buf);
}

static ssize_t health_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	return virtio_nn_health_show(buf);
}

/* Any write runs one health check at once. */
static ssize_t health_store(struct kobject *kobj, struct kobj_attribute *attr,
			    const char *buf, size_t count)
{
	virtio_nn_health_run();
	return count;
}

static struct kobj_attribute virtio_nn_model_info_attr = __ATTR_RO(model_info);
static struct kobj_attribute virtio_nn_performance_attr = __ATTR_RO(performance);
static struct kobj_attribute virtio_nn_health_attr =
	__ATTR(health, 0644, health_show, health_store);

static struct attribute *virtio_nn_attrs[] = {
	&virtio_nn_model_info_attr.attr,
	&virtio_nn_performance_attr.attr,
	&virtio_nn_health_attr.attr,
	NULL,
};

static const struct attribute_group virtio_nn_attr_group = {
	.attrs = virtio_nn_attrs,
};

/* Adds the attributes to @kobj. */
int virtio_nn_sysfs_create_file(struct kobject *kobj)
{
	return sysfs_create_group(kobj, &virtio_nn_attr_group);
}

void virtio_nn_sysfs_remove_file(struct kobject *kobj)
{
	sysfs_remove_group(kobj, &virtio_nn_attr_group);
}

/* --- periodic health check --------------------------------------------- */

static unsigned int health_interval_ms = 60000;
module_param(health_interval_ms, uint, 0644);
MODULE_PARM_DESC(health_interval_ms,
		 "Period of the health check, in ms (0: none from the next run on)");

static struct delayed_work virtio_nn_health_work;

static void virtio_nn_health_fn(struct work_struct *work)
{
	unsigned int ms;

	virtio_nn_health_run();
	ms = READ_ONCE(health_interval_ms);
	if (ms)
		queue_delayed_work(system_long_wq, &virtio_nn_health_work,
				   msecs_to_jiffies(ms));
}

void virtio_nn_health_start(void)
{
	unsigned int ms = READ_ONCE(health_interval_ms);

	INIT_DELAYED_WORK(&virtio_nn_health_work, virtio_nn_health_fn);
	if (ms)
		queue_delayed_work(system_long_wq, &virtio_nn_health_work,
				   msecs_to_jiffies(ms));
}

/* Cancels the check and waits for a running one (it cannot re-arm). */
void virtio_nn_health_stop(void)
{
	cancel_delayed_work_sync(&virtio_nn_health_work);
}

/* --- /dev/neural_network (devfile.rs) ---------------------------------- */

static const struct file_operations virtio_nn_dev_fops = {
	.owner = THIS_MODULE,
	.open = virtio_nn_dev_open,
	.release = virtio_nn_dev_release,
	.read = virtio_nn_dev_read,
	.write = virtio_nn_dev_write,
	.llseek = default_llseek,
};

/*
 * Who may use /dev/neural_network. dev_mode: the mode devtmpfs gives the
 * node (default 0666, the seed's interface; e.g. 0660 with a udev/mdev rule
 * that sets its group). dev_gid: if set (>= 0), open() also requires
 * membership of that group (or CAP_DAC_OVERRIDE), whatever the node's mode
 * and owner: the misc core cannot give devtmpfs a group.
 */
static ushort dev_mode = 0666;
module_param(dev_mode, ushort, 0444);
MODULE_PARM_DESC(dev_mode, "Mode of /dev/neural_network (default 0666)");

static int dev_gid = -1;
module_param(dev_gid, int, 0444);
MODULE_PARM_DESC(dev_gid,
		 "Only members of this group may open /dev/neural_network (-1: anyone the mode allows)");

static struct miscdevice virtio_nn_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "neural_network",
	.fops = &virtio_nn_dev_fops,
	.mode = 0666,
};

int virtio_nn_misc_register(void)
{
	virtio_nn_misc.mode = dev_mode & 0777;
	return misc_register(&virtio_nn_misc);
}

/* Whether the caller may open /dev/neural_network (dev_gid). */
bool virtio_nn_dev_allowed(void)
{
	kgid_t gid;

	if (dev_gid < 0)
		return true;
	gid = make_kgid(&init_user_ns, dev_gid);
	return gid_valid(gid) && (in_group_p(gid) || capable(CAP_DAC_OVERRIDE));
}

void virtio_nn_misc_deregister(void)
{
	misc_deregister(&virtio_nn_misc);
}

/* --- the result cache's shrinker (cache.rs) ---------------------------- */

static struct shrinker *virtio_nn_shrinker;

static unsigned long virtio_nn_shrink_count(struct shrinker *s,
					    struct shrink_control *sc)
{
	return virtio_nn_cache_count();
}

static unsigned long virtio_nn_shrink_scan(struct shrinker *s,
					   struct shrink_control *sc)
{
	return virtio_nn_cache_scan(sc->nr_to_scan);
}

int virtio_nn_shrinker_register(void)
{
	virtio_nn_shrinker = shrinker_alloc(0, "virtio_nn-cache");
	if (!virtio_nn_shrinker)
		return -ENOMEM;
	virtio_nn_shrinker->count_objects = virtio_nn_shrink_count;
	virtio_nn_shrinker->scan_objects = virtio_nn_shrink_scan;
	virtio_nn_shrinker->seeks = DEFAULT_SEEKS;
	shrinker_register(virtio_nn_shrinker);
	return 0;
}

void virtio_nn_shrinker_unregister(void)
{
	shrinker_free(virtio_nn_shrinker);
}

/* --- the CPU fallback's copy of the model (model_copy.rs) -------------- */

/*
 * The copy is fetched by a work item on system_long_wq (a fetch waits for
 * the device, chunk by chunk): after probe, after a config-change event,
 * when fallback_max_bytes is written, and again after a failed fetch once
 * the device answers. It never runs on a caller's path.
 */
static struct work_struct virtio_nn_fetch_work;
static bool virtio_nn_fetch_ready;

static void virtio_nn_fetch_fn(struct work_struct *work)
{
	virtio_nn_model_fetch_run();
}

/* Queues the fetch (any context); a no-op before start and after stop. */
void virtio_nn_fetch_schedule(void)
{
	if (smp_load_acquire(&virtio_nn_fetch_ready))
		queue_work(system_long_wq, &virtio_nn_fetch_work);
}

void virtio_nn_fetch_start(void)
{
	INIT_WORK(&virtio_nn_fetch_work, virtio_nn_fetch_fn);
	smp_store_release(&virtio_nn_fetch_ready, true);
}

/* Waits for a running fetch; later virtio_nn_fetch_schedule()s do nothing. */
void virtio_nn_fetch_stop(void)
{
	disable_work_sync(&virtio_nn_fetch_work);
}

static unsigned int fallback_max_bytes = 1 << 20;

static int fallback_max_bytes_set(const char *val,
				  const struct kernel_param *kp)
{
	int ret = param_set_uint(val, kp);

	if (!ret)
		virtio_nn_fetch_schedule();
	return ret;
}

static const struct kernel_param_ops fallback_max_bytes_ops = {
	.set = fallback_max_bytes_set,
	.get = param_get_uint,
};
module_param_cb(fallback_max_bytes, &fallback_max_bytes_ops,
		&fallback_max_bytes, 0644);
MODULE_PARM_DESC(fallback_max_bytes,
		 "Largest model file copied for the CPU fallback, in bytes (default 1 MiB; 0: no fallback)");

unsigned int virtio_nn_fallback_max_bytes(void)
{
	return READ_ONCE(fallback_max_bytes);
}

/* The standard CRC-32C (Castagnoli) of @len bytes at @buf. */
u32 virtio_nn_crc32c(const u8 *buf, size_t len)
{
	return ~__crc32c_le(~0U, buf, len);
}

void virtio_nn_cond_resched(void)
{
	cond_resched();
}
