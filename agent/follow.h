/* follow.h - fork()ed children that capture while their parent does.
 *
 * A PyTorch job's data-loader workers are fork()ed children of the training
 * process: they have no control socket and mark no steps, so a capture of
 * the trainer never covered them, and an input-bound job's profile showed
 * the trainer waiting on a queue with no sign of what the workers did.
 * With TBPROF_CHILDREN=on (the default) a child follows its parent: it
 * captures while the parent captures and writes its own file into the
 * parent's run folder (<host>.pid<child pid>), so xprof shows it beside
 * the parent as another host.
 *
 * How: each process that forks (with the agent on) has a page of its own,
 * shared with its children (a memfd's, MAP_SHARED, made at the first fork). Its `seq` is odd from a capture's arm (its sources start: a step
 * window's one step early) to its end: each adds one and wakes the page's
 * futex, so children start their sources with the parent's. When the window
 * begins the parent writes its run folder and begin time into the page; at
 * the end its end time. A child trims its capture to the parent's window
 * (CLOCK_MONOTONIC is the machine's), and writes nothing where the parent's
 * never began. A child that calls tb_follow_parent() gets one
 * small thread of ours (started by the Python helper's
 * os.register_at_fork hook, after CPython has set the child up; C programs
 * call tbprof_follow_parent() in their children) that sleeps on that futex
 * and starts and stops the child's own capture through the agent
 * (tb_agent_follow_start/stop). A child forked during a capture joins it.
 * A parent that ends mid-capture (its pid is no longer the child's parent,
 * checked each second while following) ends the child's capture, written
 * under the child's own name.
 *
 * Workers that are not fork()ed from their parent: multiprocessing's
 * "spawn" workers are exec()ed children (the Python helper calls
 * tb_follow_parent at their start), and "forkserver" workers (the default
 * start method on Linux from Python 3.14) are forked by a forkserver the
 * parent exec()ed. Neither inherits the page: the follower's thread asks
 * the parent's agent for it over the control socket (an fd passed with
 * SCM_RIGHTS: the page is a memfd's), then follows as a fork child does.
 * A forkserver makes no page of its own: its workers ask its parent. The page costs the parent one atomic add and
 * one futex wake per capture begin and end; an idle child's thread sleeps.
 */
#ifndef TBPROF_AGENT_FOLLOW_H
#define TBPROF_AGENT_FOLLOW_H

#include <stddef.h>
#include <stdint.h>

#define TB_FOLLOW_RUN_MAX 511
/* Children that capture with one capture of their parent: a data loader's
 * workers fit; a program that forks a child per task (a pre-fork server)
 * does not get a profile per task. */
#define TB_FOLLOW_MAX 32
/* A child's capture's trigger (tbprof_trigger): this, the pid it follows,
 * ")". `tbprof summary` reads the pid back (its "worker of" row). */
#define TB_FOLLOW_TRIGGER "the parent process' capture (pid "

/* Any process, before fork() (our prepare handler, g.lock held): make this
 * process's page if it has none (on = TBPROF_CHILDREN). 1 when it was made
 * now: a capture already under way is to be published on it. */
int tb_follow_prepare_fork(int on);
/* The fork child (our child handler): the parent's page is the one to
 * follow; this process makes its own at its first fork. */
void tb_follow_fork_child(void);

/* The agent thread, for an exec()ed child that asks over the control
 * socket (ctl.h's "follow"): an fd of this process's page (made now where
 * it had none: *made 1, a capture under way is to be published on it),
 * for the caller to send and close; -EPERM (TBPROF_CHILDREN off), -ENOSYS
 * (no memfd here), -ENOMEM. */
int tb_follow_share(int on, int *made);

/* The parent's capture as a child sees it. */
typedef struct tb_follow_window {
    int64_t begin_ns, end_ns;        /* CLOCK_MONOTONIC; 0: not begun / not ended (never, at the end) */
    char run[TB_FOLLOW_RUN_MAX + 1]; /* its run folder ("" before it began) */
} tb_follow_window;

/* The publishing side, in the process that captures (agent thread; never
 * blocks; nothing without a page): its sources start (children start
 * theirs), its window began (the run folder is decided), and it ended
 * (end_ns 0: it never began, nothing is written). */
int tb_follow_arm(void); /* 1: published (0: no page yet, made at the first fork) */
void tb_follow_begin(const char *run, int64_t begin_ns);
void tb_follow_end(int64_t end_ns);

/* The parent's agent is there, capturing (agent thread, each turn): a
 * child takes a capture whose parent stopped beating for 10 s as over (a
 * parent that exec()ed, or hangs, mid-capture). */
void tb_follow_beat(int64_t now);

/* In a fork child: the parent's capture cap_seq (the one the child joined),
 * once it began (1), for a child that ends before its parent's capture
 * does; end_ns 0 while it is on. */
int tb_follow_peek(uint32_t cap_seq, tb_follow_window *w);

/* Start following the parent. In a fork child, its page; in a worker a
 * multiprocessing forkserver forked, the page of the forkserver's parent;
 * in an exec()ed child, its parent's: both asked for over that process's
 * control socket by the thread, which ends quietly where no agent answers
 * or TBPROF_CHILDREN is off there. 0, -ENOENT (a fork child of a process
 * without a page: forked before its agent was on, or TBPROF_CHILDREN off
 * there; or an orphan), -EALREADY, or a negative errno from the thread's
 * start. */
int tb_follow_parent(void);

/* 1 in a child that follows its parent (one atomic load elsewhere). */
int tb_follow_following(void);

/* Tests: forget the pages (no unmap). */
void tb_follow_reset_for_test(void);

#endif
