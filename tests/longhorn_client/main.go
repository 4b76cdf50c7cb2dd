// Command longhorn-download fetches a URL the way Longhorn's backing-image-manager (BIM) does for
// a BackingImage with `sourceType: download`, and leaves the result on a Longhorn disk laid out
// as BIM leaves it. bifs's tests use it as the client of `bifs serve` (tests/longhorn_download.rs).
//
// Written for bifs from reading BIM's source (github.com/longhorn/backing-image-manager, master
// and the v1.7.x branch); no code is copied. Each step names the BIM function whose behaviour it
// reproduces. It is Go, with only the standard library, on purpose: BIM's client is Go's
// net/http with its default transport, so the HTTP behaviour (request headers, the automatic
// `Accept-Encoding: gzip` and transparent decompression on GET but not on HEAD, keep-alive
// connection reuse between the HEAD and the GET, HTTP/2 over TLS, redirects, TLS verification
// against the system roots) is the real thing, not an imitation.
//
// What a download is, in BIM (two processes on the node that holds the chosen disk):
//
//  1. The data-source pod (`backing-image-manager data-source`, pkg/datasource/service.go
//     LaunchService → downloadFromURL → the sync server's doDownloadFromURL) creates a
//     SyncingFile for DISK/tmp/NAME-UUID (pkg/sync/sync_file.go NewSyncingFile), then
//     SyncingFile.DownloadFromURL: HEAD (pkg/sync/handler.go GetSizeFromURL), GET
//     (HTTPHandler.DownloadFromURL) into DISK/tmp/NAME-UUID.tmp through IdleTimeoutCopy,
//     finishProcessing (size check), postProcessSyncFile (SHA-512, compare with spec.checksum,
//     qemu-img virtual size, real size, NAME-UUID.cfg, rename).
//     (BIM's sync server begins about 1 s after creating the SyncingFile, when
//     WaitForStateNonPending first polls; that delay changes no limit and is left out.)
//  2. The node's backing-image-manager (pkg/manager/service.go Fetch → the sync server's doFetch
//     → SyncingFile.Fetch) moves that file to DISK/backing-images/NAME-UUID/backing.tmp and its
//     .cfg to backing.cfg, finishProcessing again (the checksum comes from the .cfg, whose
//     modification time matches), rewrites backing.cfg and renames backing.tmp to backing.
//
// Usage:
//
//	longhorn-download [--longhorn 1.7|1.8] [--timeout D] [--checksum HEX]
//	                  [--disk DIR [--init-disk NAME]] [--name NAME] [--uuid UUID] URL
//
// Prints one JSON line on stdout (status, sizes, checksum, timings) and exits 0 when the file
// became ready, 1 with Longhorn's message on stderr when it failed, 2 on a usage error.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Constants of BIM's pkg/types/types.go and pkg/sync.
const (
	// types.HTTPTimeout: 4 s on v1.7.x (and v1.6.x), 30 s from v1.8.x (BIM commit f5cae3ee,
	// "enlarge io context timeout to avoid endless restart loop").
	httpTimeoutV17 = 4 * time.Second
	httpTimeoutV18 = 30 * time.Second
	// handler.go DownloadBufferSize.
	downloadBufferSize = 1 << 12
	// sync_file.go RetryCount × RetryInterval: waitForProcessingBeginWithTimeout fails a
	// SyncingFile still "starting" (no byte copied yet) after 60 ticks of 1 s.
	processingBeginTimeout = 60 * time.Second
	// types.DefaultSectorSize: doFetch refuses a size that is not a multiple of it.
	sectorSize = 512
	// types.DiskPathInContainer: where BIM's pods mount the disk; the paths BIM records in
	// backing.cfg and puts in its messages start with it.
	diskPathInContainer = "/data/"
)

type options struct {
	url              string
	longhorn         string
	timeout          time.Duration
	beginTimeout     time.Duration
	expectedChecksum string
	disk             string
	initDisk         string
	name             string
	uuid             string
	qemuImg          string
}

// result is the one JSON line printed on stdout.
type result struct {
	Status string `json:"status"`
	// "download" (the data-source pod) or "fetch" (the node's BIM): where a failure happened.
	Stage           string  `json:"stage,omitempty"`
	URL             string  `json:"url"`
	HeadSize        int64   `json:"headSize"`
	Size            int64   `json:"size"`
	VirtualSize     int64   `json:"virtualSize"`
	RealSize        int64   `json:"realSize"`
	Checksum        string  `json:"checksum,omitempty"`
	File            string  `json:"file,omitempty"`
	Config          string  `json:"config,omitempty"`
	HeadSeconds     float64 `json:"headSeconds"`
	GetHeadSeconds  float64 `json:"getHeadersSeconds"`
	FirstByteSecond float64 `json:"firstByteSeconds"`
	TotalSeconds    float64 `json:"totalSeconds"`
	TimeoutSeconds  float64 `json:"timeoutSeconds"`
	Message         string  `json:"message,omitempty"`
}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "longhorn-download:", err)
		os.Exit(2)
	}
	res := run(opts)
	line, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(os.Stderr, "longhorn-download: encoding the result:", err)
		os.Exit(2)
	}
	fmt.Println(string(line))
	if res.Status != "ready" {
		fmt.Fprintln(os.Stderr, res.Message)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("longhorn-download", flag.ContinueOnError)
	fs.StringVar(&o.longhorn, "longhorn", "1.7", "Longhorn version to behave as: 1.7 (HTTPTimeout 4 s, backing.cfg without realSize) or 1.8 (30 s, with realSize; also 1.9+)")
	fs.DurationVar(&o.timeout, "timeout", 0, "override types.HTTPTimeout (the HEAD deadline and the idle limit of the copy)")
	fs.DurationVar(&o.beginTimeout, "begin-timeout", processingBeginTimeout, "how long the first byte may take (SyncingFile.waitForProcessingBeginWithTimeout)")
	fs.StringVar(&o.expectedChecksum, "checksum", "", "spec.checksum: the SHA-512 (hex) the file must have; empty = not checked")
	fs.StringVar(&o.disk, "disk", "", "the Longhorn disk (a directory with longhorn-disk.cfg); default: a temporary one, removed after")
	fs.StringVar(&o.initDisk, "init-disk", "", "write DISK/longhorn-disk.cfg with this disk name (as longhorn-manager does when a disk is added) if it is missing")
	fs.StringVar(&o.name, "name", "download", "the BackingImage's name")
	fs.StringVar(&o.uuid, "uuid", "", "the BackingImage's status.uuid (default: random, 8 hex digits as longhorn-manager makes them)")
	fs.StringVar(&o.qemuImg, "qemu-img", "qemu-img", "qemu-img binary for the virtual size (BIM runs `qemu-img info --output=json`)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() != 1 {
		return o, errors.New("exactly one URL expected")
	}
	o.url = fs.Arg(0)
	switch o.longhorn {
	case "1.7":
		if o.timeout == 0 {
			o.timeout = httpTimeoutV17
		}
	case "1.8":
		if o.timeout == 0 {
			o.timeout = httpTimeoutV18
		}
	default:
		return o, fmt.Errorf("--longhorn must be 1.7 or 1.8, not %q", o.longhorn)
	}
	if o.uuid == "" {
		o.uuid = randomHex(4)
	}
	return o, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// host maps a path on the disk as BIM sees it (under /data/) to where the disk really is.
type disk struct{ root string }

func (d disk) host(inContainer string) string {
	return filepath.Join(d.root, strings.TrimPrefix(inContainer, diskPathInContainer))
}

func run(o options) (res result) {
	res = result{URL: o.url, Status: "failed", TimeoutSeconds: o.timeout.Seconds(), HeadSize: -1}
	start := time.Now()
	defer func() { res.TotalSeconds = time.Since(start).Seconds() }()

	root := o.disk
	if root == "" {
		tmp, err := os.MkdirTemp("", "longhorn-disk")
		if err != nil {
			res.Message = err.Error()
			return res
		}
		defer os.RemoveAll(tmp)
		root = tmp
		if o.initDisk == "" {
			o.initDisk = "default-disk"
		}
	}
	d := disk{root}
	if o.initDisk != "" {
		if err := initDisk(root, o.initDisk); err != nil {
			res.Message = err.Error()
			return res
		}
	}
	// datasource.LaunchService: util.GetDiskConfig(types.DiskPathInContainer).
	diskUUID, err := diskConfig(d)
	if err != nil {
		res.Stage = "download"
		res.Message = err.Error()
		return res
	}

	// Stage 1, the data-source pod. types.GetDataSourceFilePath: DISK/tmp/NAME-UUID.
	dsPath := filepath.Join(diskPathInContainer, "tmp", o.name+"-"+o.uuid)
	ds := newSyncingFile(d, dsPath, o.uuid, diskUUID, o.expectedChecksum, 0, o)
	res.Stage = "download"
	if err := ds.init(); err != nil {
		res.Message = err.Error()
		return res
	}
	ds.downloadFromURL(o.url, &res)
	if ds.state != "ready" {
		res.Message = ds.message
		return res
	}

	// Stage 2, the node's BIM: longhorn-manager's backing image manager controller calls Fetch
	// with the data source's status (bids.Status.Checksum = its current checksum,
	// bids.Status.Size = its size; controller/backing_image_manager_controller.go).
	res.Stage = "fetch"
	biPath := filepath.Join(diskPathInContainer, "backing-images", o.name+"-"+o.uuid, "backing")
	if ds.size%sectorSize != 0 {
		// sync/service.go doFetch, before any SyncingFile exists.
		res.Message = fmt.Sprintf("the file size %d should be a multiple of %d bytes since Longhorn uses directIO by default", ds.size, sectorSize)
		return res
	}
	bi := newSyncingFile(d, biPath, o.uuid, diskUUID, ds.currentChecksum, ds.size, o)
	if err := bi.init(); err != nil {
		res.Message = err.Error()
		return res
	}
	bi.fetch(dsPath)
	if bi.state != "ready" {
		res.Message = bi.message
		return res
	}
	res.Stage = ""
	res.Status = "ready"
	res.Size = bi.size
	res.VirtualSize = bi.virtualSize
	res.RealSize = bi.realSize
	res.Checksum = bi.currentChecksum
	if o.disk != "" {
		// A temporary disk is gone once this returns: no path to report.
		res.File = d.host(biPath)
		res.Config = d.host(configPath(biPath))
	}
	return res
}

// initDisk writes longhorn-disk.cfg and replicas/ as longhorn-manager does when a filesystem disk
// is added (controller/monitor/disk_utils.go generateFilesystemTypeDiskConfig), unless present.
func initDisk(root, name string) error {
	cfg := filepath.Join(root, "longhorn-disk.cfg")
	if _, err := os.Stat(cfg); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(root, "replicas"), 0755); err != nil {
		return err
	}
	u := make([]byte, 16)
	if _, err := rand.Read(u); err != nil {
		return err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	id := fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	// util.DiskConfig's JSON field order: diskName, diskUUID, diskDriver, state.
	text, err := json.Marshal(struct {
		DiskName   string `json:"diskName"`
		DiskUUID   string `json:"diskUUID"`
		DiskDriver string `json:"diskDriver"`
		State      string `json:"state"`
	}{name, id, "", "ready"})
	if err != nil {
		return err
	}
	return os.WriteFile(cfg, text, 0644)
}

// diskConfig follows BIM's util.GetDiskConfig: the disk UUID from longhorn-disk.cfg.
func diskConfig(d disk) (string, error) {
	p := filepath.Join(diskPathInContainer, "longhorn-disk.cfg")
	data, err := os.ReadFile(d.host(p))
	if err != nil {
		return "", fmt.Errorf("cannot find disk config file %v: %v", p, err)
	}
	var cfg struct {
		DiskUUID string `json:"diskUUID"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", fmt.Errorf("failed to unmarshal %v content %v: %v", p, data, err)
	}
	return cfg.DiskUUID, nil
}

// syncingFile is the part of BIM's sync.SyncingFile a download and a fetch go through. Paths are
// kept as BIM sees them (under /data/), since they appear in its messages and in backing.cfg.
type syncingFile struct {
	d    disk
	opts options

	filePath         string
	tmpFilePath      string
	uuid             string
	diskUUID         string
	expectedChecksum string

	mu               sync.Mutex
	ctx              context.Context
	cancel           context.CancelFunc
	state            string
	size             int64
	processedSize    int64
	virtualSize      int64
	realSize         int64
	currentChecksum  string
	modificationTime string
	message          string
}

func newSyncingFile(d disk, filePath, uuid, diskUUID, expectedChecksum string, size int64, o options) *syncingFile {
	ctx, cancel := context.WithCancel(context.Background())
	return &syncingFile{
		d: d, opts: o,
		filePath: filePath, tmpFilePath: filePath + ".tmp",
		uuid: uuid, diskUUID: diskUUID, expectedChecksum: expectedChecksum,
		ctx: ctx, cancel: cancel, state: "pending", size: size,
	}
}

// init follows NewSyncingFile's goroutine once checkAndReuseFile has found nothing to reuse (a
// fresh BackingImage: its uuid is new): create the directory with mode 0666 (as BIM does: with
// the usual umask 022 that is 0644, a directory without search permission for group and
// others), remove any leftover temporary and final file, and become "starting".
func (sf *syncingFile) init() error {
	if err := os.MkdirAll(sf.d.host(filepath.Dir(sf.filePath)), 0666); err != nil && !os.IsExist(err) {
		return err
	}
	if err := os.RemoveAll(sf.d.host(sf.tmpFilePath)); err != nil {
		return err
	}
	if err := os.RemoveAll(sf.d.host(sf.filePath)); err != nil {
		return err
	}
	sf.state = "starting"
	return nil
}

// updateProgress follows SyncingFile.updateProgress: the first bytes make the file
// "in-progress"; processedSize counts written and skipped (zero) bytes.
func (sf *syncingFile) updateProgress(n int64) {
	sf.mu.Lock()
	defer sf.mu.Unlock()
	if sf.state == "starting" {
		sf.state = "in-progress"
	}
	if sf.state == "ready" {
		return
	}
	sf.processedSize += n
}

// handleFailure follows SyncingFile.handleFailureNoLock: the first failure wins, both files are
// removed, and the message is Longhorn's.
func (sf *syncingFile) handleFailure(err error) {
	if err == nil || sf.state == "failed" || sf.state == "ready" {
		return
	}
	sf.state = "failed"
	_ = os.RemoveAll(sf.d.host(sf.tmpFilePath))
	_ = os.RemoveAll(sf.d.host(sf.filePath))
	sf.message = fmt.Sprintf("failed to process sync file: %v", err)
}

// watchBegin follows SyncingFile.waitForProcessingBeginWithTimeout: a file still "starting" (no
// byte received) when the time is up fails. BIM does not stop the transfer then (the file is
// failed either way); this client does, so that it returns.
func (sf *syncingFile) watchBegin() (stop func()) {
	t := time.AfterFunc(sf.opts.beginTimeout, func() {
		sf.mu.Lock()
		defer sf.mu.Unlock()
		if sf.state == "pending" || sf.state == "starting" {
			sf.handleFailure(fmt.Errorf("failed to wait for processing begin in %v seconds, current state %v", int(sf.opts.beginTimeout.Seconds()), sf.state))
			sf.cancel()
		}
	})
	return func() { t.Stop() }
}

// downloadFromURL follows SyncingFile.DownloadFromURL: HEAD for the size, then the download into
// the temporary file, then finishProcessing.
func (sf *syncingFile) downloadFromURL(url string, res *result) {
	defer sf.watchBegin()()
	var err error
	defer func() { sf.finishProcessing(err) }()

	t0 := time.Now()
	size, err := getSizeFromURL(url, sf.opts.timeout)
	res.HeadSeconds = time.Since(t0).Seconds()
	if err != nil {
		return
	}
	res.HeadSize = size
	sf.mu.Lock()
	sf.size = size
	sf.mu.Unlock()
	_, err = sf.downloadBody(url, res)
}

// getSizeFromURL follows HTTPHandler.GetSizeFromURL: a HEAD with types.HTTPTimeout as the
// deadline of the whole exchange, status exactly 200, the size from the Content-Length header
// as sent (-1 when there is none, a parse error when it is not a decimal number).
func getSizeFromURL(url string, timeout time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return 0, err
	}
	client := newDownloadHTTPClient()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("expected status code 200 from %s, got %s", url, resp.Status)
	}
	cl := resp.Header.Get("Content-Length")
	if cl == "" {
		return -1, nil
	}
	return strconv.ParseInt(cl, 10, 64)
}

// downloadBody follows HTTPHandler.DownloadFromURL: a GET with no deadline of its own (the
// SyncingFile's context; the idle timer starts only once the response headers are in), status
// exactly 200, the body copied by IdleTimeoutCopy into a new file, then truncated to the bytes
// counted (so a trailing hole gets its length).
func (sf *syncingFile) downloadBody(url string, res *result) (int64, error) {
	ctx, cancel := context.WithCancel(sf.ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	client := newDownloadHTTPClient()
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	res.GetHeadSeconds = time.Since(t0).Seconds()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("expected status code 200 from %s, got %s", url, resp.Status)
	}
	out, err := os.Create(sf.d.host(sf.tmpFilePath))
	if err != nil {
		return 0, err
	}
	defer out.Close()
	first := true
	copied, err := idleTimeoutCopy(ctx, cancel, resp.Body, out, sf.opts.timeout, func(n int64) {
		if first {
			first = false
			res.FirstByteSecond = time.Since(t0).Seconds()
		}
		sf.updateProgress(n)
	})
	if err != nil {
		return 0, err
	}
	if err := out.Truncate(copied); err != nil {
		return 0, fmt.Errorf("failed to truncate the file after download: %w", err)
	}
	return copied, nil
}

// newDownloadHTTPClient follows NewDownloadHttpClient: Go's default transport (proxies from the
// environment, system TLS roots, HTTP/2 when TLS offers it, gzip asked for and undone on GET),
// no client timeout, and every redirect followed (a CheckRedirect that never refuses lifts Go's
// default limit of 10) with the Referer header that Go adds on a redirect removed.
func newDownloadHTTPClient() *http.Client {
	return &http.Client{
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			for name := range req.Header {
				if strings.EqualFold(name, "Referer") {
					delete(req.Header, name)
				}
			}
			return nil
		},
	}
}

// idleTimeoutCopy follows handler.go IdleTimeoutCopy with writeZero=false: reads of at most
// 4 KiB; a read whose bytes are all zero becomes a seek (a hole) instead of a write; every read
// that returned bytes restarts the idle timer; when the timer runs out the context is cancelled,
// which fails the body read in progress ("context canceled") or the next round ("context
// cancelled during the copy").
func idleTimeoutCopy(ctx context.Context, cancel context.CancelFunc, src io.Reader, dst io.WriteSeeker, timeout time.Duration, progress func(int64)) (int64, error) {
	idle := time.AfterFunc(timeout, func() {
		fmt.Fprintf(os.Stderr, "longhorn-download: IO timeout exceeded (%v), cancel the copy\n", timeout)
		cancel()
	})
	defer idle.Stop()
	buf := make([]byte, downloadBufferSize)
	zeros := make([]byte, downloadBufferSize)
	var copied int64
	for {
		select {
		case <-ctx.Done():
			return copied, errors.New("context cancelled during the copy")
		default:
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			var done int64
			var err error
			if bytes.Equal(buf[:n], zeros[:n]) {
				_, err = dst.Seek(int64(n), io.SeekCurrent)
				done = int64(n)
			} else {
				var w int
				w, err = dst.Write(buf[:n])
				done = int64(w)
			}
			if err != nil {
				return copied, err
			}
			idle.Reset(timeout)
			copied += done
			progress(done)
		}
		if rerr == io.EOF {
			return copied, nil
		}
		if rerr != nil {
			return copied, rerr
		}
	}
}

// fetch follows SyncingFile.Fetch (called by the node's BIM once the data source is
// "ready-for-transfer"): move the data source's file and its .cfg under backing-images/, then
// finishProcessing.
func (sf *syncingFile) fetch(src string) {
	var err error
	defer func() { sf.finishProcessing(err) }()
	srcHost := sf.d.host(src)
	st, err := os.Stat(srcHost)
	if err != nil {
		return
	}
	if st.IsDir() {
		err = fmt.Errorf("the src file %v of the fetch call should not be dir", src)
		return
	}
	if err = os.Rename(srcHost, sf.d.host(sf.tmpFilePath)); err != nil {
		return
	}
	if cst, cerr := os.Stat(sf.d.host(configPath(src))); cerr == nil && !cst.IsDir() {
		if err = os.Rename(sf.d.host(configPath(src)), sf.d.host(configPath(sf.filePath))); err != nil {
			return
		}
	}
	sf.mu.Lock()
	sf.state = "in-progress"
	sf.processedSize = st.Size()
	sf.mu.Unlock()
}

// finishProcessing follows SyncingFile.finishProcessing (the v1 data engine) and, when no valid
// .cfg gives the checksum, postProcessSyncFile (which BIM runs in the background; here it runs
// before returning): size check against HEAD's, SHA-512 of the whole file, exact string compare
// with the expected checksum, virtual and real size, the .cfg, the rename into place.
func (sf *syncingFile) finishProcessing(err error) {
	sf.mu.Lock()
	defer sf.mu.Unlock()
	sf.cancel()
	if err != nil {
		sf.handleFailure(err)
		return
	}
	if sf.state != "in-progress" {
		// BIM only logs "invalid state … after processing": a file that failed stays failed,
		// one that never began stays starting until waitForProcessingBeginWithTimeout fails it.
		if sf.state == "starting" {
			sf.handleFailure(fmt.Errorf("failed to wait for processing begin in %v seconds, current state %v", int(sf.opts.beginTimeout.Seconds()), sf.state))
		}
		return
	}
	if sf.size > 0 && sf.processedSize != sf.size {
		sf.handleFailure(fmt.Errorf("processed data size %v does not match the expected file size %v", sf.processedSize, sf.size))
		return
	}
	tmpHost := sf.d.host(sf.tmpFilePath)
	st, serr := os.Stat(tmpHost)
	if serr != nil {
		sf.handleFailure(fmt.Errorf("failed to stat tmp file %v after getting the file from source: %w", sf.tmpFilePath, serr))
		return
	}
	if st.Size() != sf.processedSize {
		sf.processedSize = st.Size()
	}
	sf.modificationTime = st.ModTime().UTC().String()

	cfgHost := sf.d.host(configPath(sf.filePath))
	cfg, cerr := readConfig(cfgHost)
	if cerr != nil {
		if rerr := os.RemoveAll(cfgHost); rerr != nil {
			sf.handleFailure(fmt.Errorf("failed to clean up the config file %v after read failure: %w", configPath(sf.filePath), rerr))
			return
		}
	}
	if cfg != nil && cfg.ModificationTime == sf.modificationTime {
		sf.currentChecksum = cfg.CurrentChecksum
	} else {
		// postProcessSyncFile.
		sum, herr := fileChecksum(tmpHost)
		if herr != nil {
			sf.handleFailure(fmt.Errorf("failed to calculate checksum for tmp file %v: %w", sf.tmpFilePath, herr))
			return
		}
		if mtime := modificationTime(tmpHost); mtime != sf.modificationTime {
			sf.handleFailure(fmt.Errorf("tmp file %v has been modified while calculaing checksum", sf.tmpFilePath))
			return
		}
		sf.currentChecksum = sum
		if sf.expectedChecksum != "" && sf.expectedChecksum != sf.currentChecksum {
			sf.handleFailure(fmt.Errorf("the expected checksum %v doesn't match the file actual checksum %v", sf.expectedChecksum, sf.currentChecksum))
			return
		}
	}
	// updateSyncReadyNoLock, updateVirtualSizeNoLock, updateRealSizeNoLock, writeConfigNoLock.
	sf.size = sf.processedSize
	sf.state = "ready"
	sf.virtualSize = virtualSize(sf.opts.qemuImg, tmpHost)
	sf.realSize = realSize(tmpHost)
	if werr := sf.writeConfig(); werr != nil {
		fmt.Fprintf(os.Stderr, "longhorn-download: failed to write config file when the file becomes ready: %v\n", werr)
	}
	// "Renaming won't change the file modification time."
	if rerr := os.Rename(tmpHost, sf.d.host(sf.filePath)); rerr != nil {
		// BIM sets finalErr, but handleFailureNoLock leaves a ready file alone: it stays
		// "ready" with no file. Reported as a failure here.
		sf.state = "failed"
		sf.message = fmt.Sprintf("failed to rename tmp file %v to file %v: %v", sf.tmpFilePath, sf.filePath, rerr)
	}
}

// configPath follows util.GetSyncingFileConfigFilePath: FILE.cfg (backing → backing.cfg).
func configPath(file string) string { return file + ".cfg" }

// syncingFileConfig is util.SyncingFileConfig as BIM v1.8+ writes it: JSON with the fields in
// this order, no indentation, no trailing newline, mode 0666 (less the umask). v1.7.x writes
// the same without realSize (configV17).
type syncingFileConfig struct {
	FilePath         string `json:"name"`
	UUID             string `json:"uuid"`
	Size             int64  `json:"size"`
	VirtualSize      int64  `json:"virtualSize"`
	RealSize         int64  `json:"realSize"`
	ExpectedChecksum string `json:"expectedChecksum"`
	CurrentChecksum  string `json:"currentChecksum"`
	ModificationTime string `json:"modificationTime"`
}

type configV17 struct {
	FilePath         string `json:"name"`
	UUID             string `json:"uuid"`
	Size             int64  `json:"size"`
	VirtualSize      int64  `json:"virtualSize"`
	ExpectedChecksum string `json:"expectedChecksum"`
	CurrentChecksum  string `json:"currentChecksum"`
	ModificationTime string `json:"modificationTime"`
}

// writeConfig follows writeConfigNoLock and util.WriteSyncingFileConfig.
func (sf *syncingFile) writeConfig() error {
	var v interface{} = syncingFileConfig{
		FilePath: sf.filePath, UUID: sf.uuid, Size: sf.size, VirtualSize: sf.virtualSize,
		RealSize: sf.realSize, ExpectedChecksum: sf.expectedChecksum,
		CurrentChecksum: sf.currentChecksum, ModificationTime: sf.modificationTime,
	}
	if sf.opts.longhorn == "1.7" {
		v = configV17{
			FilePath: sf.filePath, UUID: sf.uuid, Size: sf.size, VirtualSize: sf.virtualSize,
			ExpectedChecksum: sf.expectedChecksum, CurrentChecksum: sf.currentChecksum,
			ModificationTime: sf.modificationTime,
		}
	}
	text, err := json.Marshal(v)
	if err != nil {
		return err
	}
	p := sf.d.host(configPath(sf.filePath))
	if err := os.WriteFile(p, text, 0666); err != nil {
		_ = os.Remove(p)
		return err
	}
	return nil
}

// readConfig follows util.ReadSyncingFileConfig.
func readConfig(p string) (*syncingFileConfig, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	cfg := &syncingFileConfig{}
	if err := json.Unmarshal(data, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// fileChecksum follows util.GetFileChecksum: lower-case hex SHA-512 of the whole file.
func fileChecksum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha512.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// modificationTime follows util.FileModificationTime: Go's time.Time String of the UTC mtime.
func modificationTime(p string) string {
	st, err := os.Stat(p)
	if err != nil {
		return ""
	}
	return st.ModTime().UTC().String()
}

// virtualSize follows updateVirtualSizeNoLock: `qemu-img info --output=json FILE` (format
// probed, one minute at most), its "virtual-size"; 0 when qemu-img fails.
func virtualSize(qemuImg, p string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, qemuImg, "info", "--output=json", p).Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "longhorn-download: failed to get backing image virtual size: %v\n", err)
		return 0
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		fmt.Fprintf(os.Stderr, "longhorn-download: failed to get backing image virtual size: %v\n", err)
		return 0
	}
	return info.VirtualSize
}

// realSize follows util.GetFileRealSize: allocated 512-byte blocks × 512 (so the holes left by
// IdleTimeoutCopy's skipped zero reads do not count).
func realSize(p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}
