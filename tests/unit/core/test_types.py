from timely.runrecord import append_trajectories, iter_trajectories
from timely.types import (
    Completion,
    EndReason,
    Message,
    Step,
    ToolCall,
    ToolResult,
    Trajectory,
)


def _traj(seed: int) -> Trajectory:
    call = ToolCall(id="c1", name="calculator", arguments={"expression": "2+2"})
    return Trajectory(
        task_id="math/arithmetic-v1",
        seed=seed,
        clock="virtual",
        budget_s=30,
        messages=[
            Message(role="user", content="2+2?"),
            Message(role="assistant", content="", tool_calls=[call]),
            Message(role="tool", content="4", tool_call_id="c1", name="calculator"),
            Message(role="assistant", content="Answer: 4"),
        ],
        steps=[
            Step(
                index=0,
                clock="virtual",
                started_at=0,
                ended_at=1.2,
                gen_s=0.2,
                tool_s=1.0,
                tool_calls=[call],
                token_ids=[1, 2, 3],
                logprobs=[-0.1, -0.2, -0.3],
                tool_results=[
                    ToolResult(call_id="c1", name="calculator", content="4", latency_s=1.0)
                ],
            )
        ],
        final_answer="Answer: 4",
        score=1.0,
        compliant=True,
        reward=1.0,
        end_reason=EndReason.ANSWERED,
    )


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "t.jsonl"
    trajs = [_traj(0), _traj(1)]
    append_trajectories(path, trajs)
    back = list(iter_trajectories(path))
    assert [t.model_dump() for t in back] == [t.model_dump() for t in trajs]
    assert back[0].steps[0].token_ids == [1, 2, 3]
    assert back[0].n_tool_calls == 1


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    append_trajectories(path, [_traj(0)])
    with path.open("a") as f:
        f.write(_traj(1).model_dump_json()[:50])  # a writer killed mid-line
    assert [t.seed for t in iter_trajectories(path)] == [0]


def test_openai_message_shape():
    call = ToolCall(id="c1", name="calculator", arguments={"expression": "1+1"})
    msg = Message(role="assistant", content="", tool_calls=[call]).to_openai()
    assert msg["tool_calls"][0]["function"]["arguments"] == '{"expression": "1+1"}'
    assert msg["tool_calls"][0]["type"] == "function"
    tool = Message(role="tool", content="2", tool_call_id="c1", name="calculator").to_openai()
    assert tool["tool_call_id"] == "c1"
    assert Completion().finish_reason == "stop"
