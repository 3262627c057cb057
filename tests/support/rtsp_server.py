#!/usr/bin/python3
"""Live RTSP test source for integration tests.

Serves one shared live stream (H.264, or HEVC with --codec h265, + optional AAC) on 127.0.0.1 and prints
`READY rtsp://127.0.0.1:PORT/PATH` on stdout once clients can connect.

Run with /usr/bin/python3 (the system interpreter is the one that has `gi`):
    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 [--path /live]
        [--width 640 --height 360 --fps 30] [--gop 30] [--bitrate 1500] [--codec h264] [--pattern ball] [--no-audio]
        [--backchannel FILE [--backchannel-codec pcmu|pcma]] [--login USER:PASSWORD]
--port 0 picks a free port; the READY line then carries the real one.

--backchannel makes it an ONVIF camera with a backchannel (GStreamer's RTSPOnvifMediaFactory): a DESCRIBE
with `Require: www.onvif.org/ver20/backchannel` gets one more audio section, `a=sendonly`, and what a client
sends there (G.711 at 8 kHz) is depayloaded and appended to FILE, as the camera's speaker would play it. Each
client then gets a pipeline of its own (ONVIF media are not shared).

--login makes it ask for that login with Digest authentication (RFC 2617), as cameras do.
"""
import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def build_launch(args):
    # clockoverlay lives in the pango plugin (gstreamer1.0-x), which is not
    # always installed; the moving ball alone is enough to make frames differ.
    overlay = ""
    if Gst.ElementFactory.find("clockoverlay"):
        overlay = "! clockoverlay time-format=%H:%M:%S font-desc=Sans,24 "
    else:
        print("rtsp_server: clockoverlay unavailable, serving without it", file=sys.stderr)

    video = (
        f"videotestsrc is-live=true pattern={args.pattern} "
        f"! video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1 "
        f"{overlay}"
        # Single-threaded, non-sliced encoding: with sliced threads a client
        # joining mid-stream can receive an IDR whose first slices are missing.
        # scenecut=0: IDRs only every GOP frames (or when a client joins).
        "! x264enc tune=zerolatency speed-preset=ultrafast sliced-threads=false threads=1 "
        f"key-int-max={args.gop} bitrate={args.bitrate} option-string=scenecut=0 "
        "! video/x-h264,profile=constrained-baseline "
        # Repeat SPS/PPS before every IDR so late joiners can decode in-band too;
        # the payloader also puts them in the SDP as sprop-parameter-sets.
        "! h264parse config-interval=-1 "
        "! rtph264pay name=pay0 pt=96 config-interval=-1"
    )
    if args.codec == "h265":
        # As an HEVC camera sends (most new ones): Main profile, no B-frames, the
        # VPS/SPS/PPS in-band before every IRAP and in the SDP (sprop-vps/sps/pps).
        video = video[: video.index("! x264enc")] + (
            "! x265enc tune=zerolatency speed-preset=ultrafast "
            f"key-int-max={args.gop} bitrate={args.bitrate} option-string=scenecut=0:pools=1:frame-threads=1 "
            "! video/x-h265,profile=main "
            "! h265parse config-interval=-1 "
            "! rtph265pay name=pay0 pt=96 config-interval=-1"
        )
    if args.no_audio:
        return f"( {video} )"
    audio = (
        "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 "
        "! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 "
        "! avenc_aac ! aacparse "
        # mpeg4-generic (RFC 3640, AAC-hbr): the variant ffmpeg and most
        # cameras use; config comes from the SDP.
        "! rtpmp4gpay name=pay1 pt=97"
    )
    return f"( {video} {audio} )"


def backchannel_launch(path, codec):
    # The element named depay_backchannel is where RTSPOnvifMedia feeds what the client sends.
    payload, depay = {"pcmu": (0, "rtppcmudepay"), "pcma": (8, "rtppcmadepay")}[codec]
    caps = f"application/x-rtp, media=audio, payload={payload}, clock-rate=8000, encoding-name={codec.upper()}"
    return (
        f'( capsfilter caps="{caps}" name=depay_backchannel ! {depay} '
        f"! filesink location={path} append=true sync=false async=false buffer-mode=unbuffered )"
    )


def force_keyframe_on_play(media):
    # A joining client would otherwise wait up to one GOP for an IDR; ask the
    # encoder for one immediately (x264enc honours upstream force-key-unit).
    pay = media.get_element().get_by_name("pay0")
    event = Gst.Event.new_custom(
        Gst.EventType.CUSTOM_UPSTREAM,
        Gst.Structure.new_from_string("GstForceKeyUnit, all-headers=(boolean)true"),
    )
    pay.get_static_pad("src").send_event(event)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/live")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gop", type=int, default=30, help="keyframe interval in frames")
    p.add_argument("--bitrate", type=int, default=1500, help="video bitrate in kbit/s")
    # The ball compresses to a few hundred kbit/s whatever the bitrate; `snow` (noise) fills it, as a busy
    # camera picture does.
    p.add_argument("--codec", default="h264", choices=["h264", "h265"], help="video codec (x264 or x265)")
    p.add_argument("--pattern", default="ball", help="videotestsrc pattern (ball, snow, smpte, ...)")
    p.add_argument("--no-audio", action="store_true")
    p.add_argument("--backchannel", metavar="FILE", help="an ONVIF backchannel whose audio goes to FILE")
    p.add_argument("--backchannel-codec", default="pcmu", choices=["pcmu", "pcma"])
    p.add_argument("--login", metavar="USER:PASSWORD", help="ask for this login (Digest)")
    args = p.parse_args()
    if not args.path.startswith("/"):
        args.path = "/" + args.path

    Gst.init(None)
    loop = GLib.MainLoop()

    server = GstRtspServer.RTSPOnvifServer() if args.backchannel else GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    if args.backchannel:
        factory = GstRtspServer.RTSPOnvifMediaFactory()
        factory.set_backchannel_launch(backchannel_launch(args.backchannel, args.backchannel_codec))
        factory.set_media_gtype(GstRtspServer.RTSPOnvifMedia.__gtype__)
        # A session that sets up the backchannel alone leaves the payloaders unlinked; their not-linked would
        # stop the media (a pipeline error) before or after the backchannel ran, by a race. A tee that allows
        # it in front of each payloader keeps the sources running, as a camera's encoders do.
        launch = build_launch(args).replace("! rtph264pay", "! tee allow-not-linked=true ! rtph264pay")
        launch = launch.replace("! rtph265pay", "! tee allow-not-linked=true ! rtph265pay")
        factory.set_launch(launch.replace("! rtpmp4gpay", "! tee allow-not-linked=true ! rtpmp4gpay"))
        factory.set_shared(False)
    else:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(build_launch(args))
        factory.set_shared(True)  # every client sees the same live pipeline
    # videotestsrc answers "seekable" even when live, so each PLAY with
    # `Range: npt=0-` (ffmpeg sends it) would flush-seek the shared pipeline
    # and throw every connected client's timestamps back to zero. Publishing
    # the clock offset (RFC 7273) makes gst-rtsp-server treat the media as
    # unseekable; the SDP gains harmless a=ts-refclk/a=mediaclk lines.
    factory.set_publish_clock_mode(GstRtspServer.RTSPPublishClockMode.CLOCK_AND_OFFSET)
    if args.login:
        user, password = args.login.split(":", 1)
        auth = GstRtspServer.RTSPAuth()
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        auth.add_digest(user, password, token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", "media.factory.access", True)
        permissions.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(args.path, factory)

    def on_client(_server, client):
        # Only shared media already running needs a fresh keyframe; a new
        # pipeline starts with one anyway, so this is harmless there.
        client.connect("play-request", lambda c, ctx: ctx.media and force_keyframe_on_play(ctx.media))

    server.connect("client-connected", on_client)

    if server.attach(None) == 0:  # bind failed, e.g. port already in use
        print(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1

    def quit_loop(*_):
        loop.quit()
        return GLib.SOURCE_REMOVE

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, quit_loop)

    # If the test process dies without killing us (panic, SIGKILL), we get
    # reparented; exit instead of lingering and holding the port.
    parent = os.getppid()
    GLib.timeout_add(500, lambda: quit_loop() if os.getppid() != parent else GLib.SOURCE_CONTINUE)

    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
