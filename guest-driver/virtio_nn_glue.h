/* SPDX-License-Identifier: GPL-2.0 */
/*
 * virtio-nn guest driver: the interface between the C glue
 * (virtio_nn_glue.c) and the Rust crate (virtio_nn_main.rs). The Rust side
 * declares the same functions in glue.rs; keep the two in sync.
 */
#ifndef VIRTIO_NN_GLUE_H
#define VIRTIO_NN_GLUE_H

#include <linux/seqlock_types.h>
#include <linux/spinlock_types.h>
#include <linux/types.h>

struct completion;
struct file;
struct inode;
struct kobject;
struct pid;
struct scatterlist;
struct proc_ops;
struct virtio_device;
struct virtqueue;
struct virtqueue_info;
struct wait_queue_head;

/* --- Callbacks implemented in Rust ------------------------------------ */

int virtio_nn_probe(struct virtio_device *vdev);
void virtio_nn_remove(struct virtio_device *vdev);
void virtio_nn_config_changed(struct virtio_device *vdev);
int virtio_nn_freeze(struct virtio_device *vdev);
int virtio_nn_restore(struct virtio_device *vdev);
void virtio_nn_vq_done(struct virtqueue *vq);
void virtio_nn_event_done(struct virtqueue *vq);

int virtio_nn_proc_open(struct inode *inode, struct file *file);
ssize_t virtio_nn_proc_read(struct file *file, char __user *buf, size_t count,
			    loff_t *pos);
ssize_t virtio_nn_proc_write(struct file *file, const char __user *buf,
			     size_t count, loff_t *pos);
int virtio_nn_proc_release(struct inode *inode, struct file *file);

int virtio_nn_dev_open(struct inode *inode, struct file *file);
int virtio_nn_dev_release(struct inode *inode, struct file *file);
ssize_t virtio_nn_dev_read(struct file *file, char __user *buf, size_t count,
			   loff_t *pos);
ssize_t virtio_nn_dev_write(struct file *file, const char __user *buf,
			    size_t count, loff_t *pos);

ssize_t virtio_nn_model_info_show(char *buf);
/* The one-value files of the device's own sysfs directory (@attr: below). */
enum virtio_nn_dev_attr {
	VIRTIO_NN_ATTR_GENERATION,
	VIRTIO_NN_ATTR_STATUS,
	VIRTIO_NN_ATTR_INPUT_DIM,
	VIRTIO_NN_ATTR_OUTPUT_DIM,
	VIRTIO_NN_ATTR_NUM_LAYERS,
	VIRTIO_NN_ATTR_MAX_BATCH,
	VIRTIO_NN_ATTR_QUEUES,
};
ssize_t virtio_nn_dev_attr_show(struct virtio_device *vdev, int attr,
				char *buf);
unsigned long virtio_nn_cache_count(void);
unsigned long virtio_nn_cache_scan(unsigned long nr);
ssize_t virtio_nn_performance_show(char *buf);
ssize_t virtio_nn_health_show(char *buf);
void virtio_nn_health_run(void);
void virtio_nn_model_fetch_run(void);

/* --- Helpers called from Rust (declared again in glue.rs) -------------- */

unsigned int virtio_nn_timeout_ms(void);
unsigned long virtio_nn_jiffies_after_ms(unsigned int ms);
long virtio_nn_jiffies_until(unsigned long end);
unsigned int virtio_nn_cpu(void);
int virtio_nn_register_driver(void);
void virtio_nn_unregister_driver(void);
u32 virtio_nn_cread32(struct virtio_device *vdev, unsigned int offset);
bool virtio_nn_has_feature(const struct virtio_device *vdev, unsigned int fbit);
int virtio_nn_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
		       struct virtqueue *vqs[],
		       struct virtqueue_info vqs_info[]);
void virtio_nn_device_ready(struct virtio_device *vdev);
void virtio_nn_del_vqs(struct virtio_device *vdev);
void virtio_nn_init_completion(struct completion *x);
unsigned long virtio_nn_spin_lock_irqsave(spinlock_t *lock);
void virtio_nn_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags);
void virtio_nn_init_waitqueue_head(struct wait_queue_head *wq);
void virtio_nn_wake_up_all(struct wait_queue_head *wq);
long virtio_nn_wait_seq_killable(struct wait_queue_head *wq, const u32 *seq,
				 u32 seen, long timeout);
bool virtio_nn_ratelimit(void);
void virtio_nn_seqlock_init(seqlock_t *sl);
void virtio_nn_write_seqlock(seqlock_t *sl);
void virtio_nn_write_sequnlock(seqlock_t *sl);
unsigned int virtio_nn_read_seqbegin(const seqlock_t *sl);
bool virtio_nn_read_seqretry(const seqlock_t *sl, unsigned int start);
struct pid *virtio_nn_get_session(void);
bool virtio_nn_session_alive(struct pid *pid);
u32 virtio_nn_current_euid(void);
void virtio_nn_rcu_read_lock(void);
void virtio_nn_rcu_read_unlock(void);
void *virtio_nn_pde_data(const struct inode *inode);
int virtio_nn_sysfs_create_file(struct kobject *kobj);
void virtio_nn_sysfs_remove_file(struct kobject *kobj);
void virtio_nn_health_start(void);
unsigned int virtio_nn_cache_ms(void);
unsigned int virtio_nn_cache_fallback_ms(void);
unsigned int virtio_nn_max_orphans(void);
unsigned int virtio_nn_max_request_kib(void);
size_t virtio_nn_kmalloc_max_size(void);
void virtio_nn_sg_set_buf(struct scatterlist *sg, const void *buf,
			  unsigned int len);
int virtio_nn_shrinker_register(void);
void virtio_nn_shrinker_unregister(void);
int virtio_nn_misc_register(void);
void virtio_nn_misc_deregister(void);
bool virtio_nn_dev_allowed(void);
void virtio_nn_health_stop(void);
void virtio_nn_fetch_schedule(void);
void virtio_nn_fetch_start(void);
void virtio_nn_fetch_stop(void);
unsigned int virtio_nn_fallback_max_bytes(void);
u32 virtio_nn_crc32c(const u8 *buf, size_t len);
void virtio_nn_cond_resched(void);
extern const struct proc_ops virtio_nn_proc_ops;

#endif /* VIRTIO_NN_GLUE_H */
